// End-to-end client for tests/test_ts_sdk_modern.py: the official TypeScript MCP SDK v2
// (@modelcontextprotocol/client) pinned to protocol revision 2026-07-28, talking through
// wire-gateway's era bridge to a legacy-only server (fixtures/servers/legacy_echo.py).
//
// Usage: node client.mjs URL [PREFIX]   e.g. http://127.0.0.1:PORT/mcp/old, or .../mcp old__
// (PREFIX: the aggregate's name prefix of the server's tools and prompts)
//
// Runs a fixed scenario: connect in the modern era (no initialize: server/discover), list and
// call tools, list and read resources, list and get prompts, completion, a call with progress,
// calls during which the server asks for input (an elicitation, a sampling request: the bridge
// answers input_required and the SDK retries with the handler's answer), a call the client
// cancels (aborts), and a subscriptions/listen stream that hears a
// tool-list change and a resource update (made by a second client). Prints ONE JSON line with the results on stdout and
// exits 0; any error: a message on stderr, exit 1. Bounded by TS_CLIENT_TIMEOUT_MS (default
// 30 s): exit 2 when it expires.

import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';
import { readFileSync } from 'node:fs';

const TOTAL_TIMEOUT_MS = Number(process.env.TS_CLIENT_TIMEOUT_MS || 30000);
const sdkVersion = JSON.parse(readFileSync(
  new URL('./node_modules/@modelcontextprotocol/client/package.json', import.meta.url), 'utf8')).version;

function fail(message, code = 1) {
  process.stderr.write(`ts-client-modern: ${message}\n`);
  process.exit(code);
}

const watchdog = setTimeout(() => fail(`timed out after ${TOTAL_TIMEOUT_MS} ms`, 2), TOTAL_TIMEOUT_MS);

function waitFor(list, what) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const tick = () => {
      if (list.length > 0) resolve(list[0]);
      else if (Date.now() - started > 10000) reject(new Error(`no ${what} within 10 s`));
      else setTimeout(tick, 20);
    };
    tick();
  });
}

async function main(url, prefix = '') {
  const tool = (name) => prefix + name;
  const errors = [];
  const asked = [];
  const sampled = [];
  const toolChanges = [];
  const updates = [];
  const client = new Client({ name: 'wire-gateway-ts-modern-test', version: '1.0.0' }, {
    capabilities: { elicitation: {}, sampling: {} },
    versionNegotiation: { mode: { pin: '2026-07-28' } },
  });
  client.onerror = (err) => errors.push(String(err?.message ?? err));
  client.setRequestHandler('elicitation/create', async (request) => {
    asked.push(request.params.message);
    return { action: 'accept', content: { name: 'Grace' } };
  });
  client.setRequestHandler('sampling/createMessage', async (request) => {
    sampled.push(request.params.messages[0].content.text);
    return { role: 'assistant', model: 'fixture-llm', content: { type: 'text', text: 'sampled by ts' } };
  });
  client.setNotificationHandler('notifications/tools/list_changed', () => { toolChanges.push(true); });
  client.setNotificationHandler('notifications/resources/updated', (n) => { updates.push(n.params.uri); });

  await client.connect(new StreamableHTTPClientTransport(new URL(url)));
  const r = {
    sdkVersion,
    era: client.getProtocolEra(),
    version: client.getNegotiatedProtocolVersion(),
    server: client.getServerVersion(),
    subscribe: client.getServerCapabilities()?.resources?.subscribe ?? false,
  };
  r.tools = (await client.listTools()).tools.map((t) => t.name).sort();
  r.echo = (await client.callTool({ name: tool('echo'), arguments: { text: 'hello' } })).content[0].text;
  r.resources = (await client.listResources()).resources.map((x) => x.uri);
  r.read = (await client.readResource({ uri: 'echo://info' })).contents[0].text;
  r.prompts = (await client.listPrompts()).prompts.map((p) => p.name);
  r.prompt = (await client.getPrompt({ name: tool('greet'), arguments: { name: 'Ada' } })).messages[0].content.text;

  const progress = [];
  const progressed = await client.callTool({ name: tool('progress'), arguments: { steps: 3 } },
    { onprogress: (p) => progress.push(p.progress) });
  r.progress = { result: progressed.content[0].text, seen: progress };

  r.elicited = (await client.callTool({ name: tool('ask'), arguments: { message: 'your name?' } })).content[0].text;
  r.asked = asked;
  r.sampledAnswer = (await client.callTool({ name: tool('sample'), arguments: { prompt: 'say it' } })).content[0].text;
  r.sampled = sampled;
  r.completion = (await client.complete({ ref: { type: 'ref/prompt', name: tool('greet') },
    argument: { name: 'name', value: 'A' } })).completion.values;

  // a call the client gives up on: aborted (its stream closed); the next call is served as ever
  const abort = new AbortController();
  setTimeout(() => abort.abort(), 500);
  try {
    await client.callTool({ name: tool('wait'), arguments: { seconds: 30 } }, { signal: abort.signal });
    r.aborted = 'answered';
  } catch (err) {
    r.aborted = abort.signal.aborted ? 'aborted' : String(err?.message ?? err);
  }
  r.afterAbort = (await client.callTool({ name: tool('echo'), arguments: { text: 'after' } })).content[0].text;

  const sub = await client.listen({ toolsListChanged: true, resourceSubscriptions: ['echo://info'] });
  r.honored = sub.honoredFilter;
  await client.callTool({ name: tool('touch_tools'), arguments: {} });
  await waitFor(toolChanges, 'tools/list_changed');
  r.toolsListChanged = toolChanges.length;
  // The change comes from another client, one that declared no capability: its calls run on the
  // bridge's shared session, which holds the subscription (this client's calls, which could be asked
  // something, run on legacy sessions of their own: another process of the fixture, with its own state).
  const other = new Client({ name: 'wire-gateway-ts-modern-other', version: '1.0.0' },
    { versionNegotiation: { mode: { pin: '2026-07-28' } } });
  await other.connect(new StreamableHTTPClientTransport(new URL(url)));
  r.touched = (await other.callTool({ name: tool('touch_resource'), arguments: { uri: 'echo://info' } })).content[0].text;
  await other.close();
  await waitFor(updates, 'resources/updated');
  r.updated = updates;
  await sub.close();
  r.errors = errors;
  await client.close();
  return r;
}

main(process.argv[2], process.argv[3] || '').then((r) => {
  clearTimeout(watchdog);
  process.stdout.write(JSON.stringify(r) + '\n');
  process.exit(0);
}, (err) => fail(err?.stack ?? String(err)));
