"""The bundled demo MCP server: echo and friends, both eras (also the benchmark server).

Usage: python -m wire_gateway.demo.echo [--log PATH] [--name NAME]

Tools:
  echo {text}            -> text
  add {a, b}             -> str(a + b)
  pid {}                 -> str(os.getpid()), to observe restarts
  sample {prompt?, timeout?}
                         -> legacy only: sends sampling/createMessage (id "srv-N")
                            to the client, returns the sampled text
  where {region}         -> region; its inputSchema marks region with x-mcp-header
                            (modern HTTP clients mirror it into Mcp-Param-Region)
  touch_tools {}         -> sends notifications/tools/list_changed to every
                            subscriptions/listen stream that asked for it, and
                            (legacy sessions) to the client directly
  big {size}             -> a text of `size` bytes, for large-frame tests
  progress {steps}       -> one notifications/progress per step (if the request
                            has params._meta.progressToken), then "done"
  wait {seconds}         -> one progress notification (if asked for), then waits;
                            "waited Ns", or no answer at all once cancelled
                            (for recorded sessions with a cancellation)
Everything except `sample` runs inline on the read loop, so it stays fast.
"""

from wire_gateway.demo import rawmcp
from wire_gateway.demo.rawmcp import ToolError, need


def build(name, log=None, ttl_ms=0):
    server = rawmcp.Server(name, log, ttl_ms=ttl_ms)
    rawmcp.add_echo_and_pid(server)

    @server.tool("add", "Return str(a + b).", {"a": "number", "b": "number"})
    def add(req, args):
        return str(need(args, "a", (int, float)) + need(args, "b", (int, float)))

    @server.tool("sample", "Ask the client to sample an LLM; return the text (legacy only).",
                 {"prompt": "string", "timeout": "number"}, required=[], threaded=True)
    def sample(req, args):
        if req.modern:
            raise ToolError("sample needs a legacy session: a modern server cannot send requests")
        prompt = args.get("prompt", "Say hello")
        message = {"role": "user", "content": {"type": "text", "text": prompt}}
        resp = server.request("sampling/createMessage", {"messages": [message], "maxTokens": 100},
                              timeout=float(args.get("timeout", 30)))
        if "error" in resp:
            raise ToolError(f"sampling failed: {resp['error'].get('message')}")
        content = (resp.get("result") or {}).get("content")
        items = content if isinstance(content, list) else [content]
        return "".join(c.get("text", "") for c in items if isinstance(c, dict) and c.get("type") == "text")

    @server.tool("where", "Return the region argument (mirrored into the Mcp-Param-Region header).",
                 {"region": "string"})
    def where(req, args):
        return need(args, "region", str)

    server.tools["where"].schema["properties"]["region"]["x-mcp-header"] = "Region"

    @server.tool("touch_tools", "Announce a tool-list change to subscriptions/listen streams.")
    def touch_tools(req, args):
        sent = server.tools_changed()
        if not req.modern:   # a legacy session gets the notification on its one stream
            server.notify("notifications/tools/list_changed", {})
            sent += 1
        return f"notified {sent}"

    @server.tool("big", "Return a text of `size` characters: `text` repeated (default 'x'; for large-frame "
                 "tests and the guardrails benchmark).", {"size": "integer", "text": "string"}, required=["size"])
    def big(req, args):
        size, text = need(args, "size", int), args.get("text") or "x"
        return (text * (size // len(text) + 1))[:size]

    @server.tool("progress", "Send one progress notification per step, then return 'done'.",
                 {"steps": "integer"})
    def progress(req, args):
        steps = need(args, "steps", int)
        token = req.meta.get("progressToken")
        if token is not None:
            for i in range(1, steps + 1):
                server.notify("notifications/progress", {
                    "progressToken": token, "progress": i, "total": steps, "message": f"step {i}/{steps}"})
        return "done"

    @server.tool("wait", "Send one progress notification, then wait `seconds` (cancellable).",
                 {"seconds": "number"}, threaded=True)
    def wait(req, args):
        seconds = need(args, "seconds", (int, float))
        token = req.meta.get("progressToken")
        if token is not None:
            server.notify("notifications/progress", {"progressToken": token, "progress": 0, "total": 1,
                                                     "message": "waiting"})
        req.cancelled.wait(seconds)
        return f"waited {seconds}s"

    return server


def main():
    opts = rawmcp.arg_parser(__doc__, "echo").parse_args()
    build(opts.name, opts.log, opts.ttl_ms).run()


if __name__ == "__main__":
    main()
