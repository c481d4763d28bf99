// End-to-end client for tests/test_ts_sdk.py: the official TypeScript MCP SDK
// talking to the bundled echo server through one of wire-gateway's fronts.
//
// Usage:
//   node client.mjs http  URL                   e.g. http://127.0.0.1:PORT/mcp/echo
//   node client.mjs stdio '{"command": "...", "args": [...], "cwd": "...", "env": {...}}'
//
// Runs a fixed scenario (list tools, call echo/add/pid, list and read resources,
// get the greet prompt, call progress with an onprogress callback, call sample
// with a sampling handler when the negotiated era is legacy), prints ONE JSON line
// with the results on stdout and exits 0. Any error: a message on stderr, exit 1
// (errors the SDK only reports through Client.onerror also count: the results
// line, with an "errors" list, is still printed first).
// The whole run is bounded by a timeout (env TS_CLIENT_TIMEOUT_MS, default 30 s):
// exit 2 if it expires. Env TS_CLIENT_PREFIX: a prefix of every tool and prompt name (the
// aggregate's, `echo__`, for a server reached through /mcp).
//
// SDK workaround (v1.x, typescript-sdk issue #2580): Protocol dispatches a
// response synchronously but a notification one microtask later, so when a
// progress notification and the response to its request arrive in the same read
// (which a server writing them back to back routinely causes, with or without a
// gateway), the response retires the progress handler first: onprogress is never
// called and onerror gets "unknown token". To observe progress deterministically,
// incoming messages are handed to the SDK one per macrotask, in arrival order.
// Set TS_CLIENT_DEFER_DELIVERY=0 to turn this off (for diagnosis).

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport, getDefaultEnvironment } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { CreateMessageRequestSchema } from '@modelcontextprotocol/sdk/types.js';
import { readFileSync } from 'node:fs';

const PREFIX = process.env.TS_CLIENT_PREFIX || '';

const SAMPLING_ANSWER = 'sampled by the TypeScript SDK client';
const TOTAL_TIMEOUT_MS = Number(process.env.TS_CLIENT_TIMEOUT_MS || 30000);
const REQUEST_TIMEOUT_MS = 10000;

const sdkVersion = JSON.parse(readFileSync(
  new URL('./node_modules/@modelcontextprotocol/sdk/package.json', import.meta.url), 'utf8')).version;

function fail(message, code = 1) {
  process.stderr.write(`ts-client: ${message}\n`);
  process.exit(code);
}

const watchdog = setTimeout(() => fail(`timed out after ${TOTAL_TIMEOUT_MS} ms`, 2), TOTAL_TIMEOUT_MS);

function makeTransport(kind, target) {
  if (kind === 'http') {
    // TS_CLIENT_HEADERS: extra request headers as JSON, e.g. an Authorization header for auth tests.
    const headers = JSON.parse(process.env.TS_CLIENT_HEADERS || '{}');
    return new StreamableHTTPClientTransport(new URL(target), { requestInit: { headers } });
  }
  if (kind === 'stdio') {
    const spec = JSON.parse(target);
    return new StdioClientTransport({
      command: spec.command,
      args: spec.args ?? [],
      cwd: spec.cwd,
      env: { ...getDefaultEnvironment(), ...(spec.env ?? {}) },
      stderr: 'inherit',
    });
  }
  throw new Error(`unknown transport kind ${JSON.stringify(kind)} (expected http or stdio)`);
}

// Wrap whatever onmessage the SDK installs so each message is delivered in its
// own macrotask (setImmediate), strictly in order.
function deferDelivery(transport) {
  let deliver;
  let queue = Promise.resolve();
  Object.defineProperty(transport, 'onmessage', {
    configurable: true,
    enumerable: true,
    get: () => deliver,
    set: (fn) => {
      deliver = typeof fn !== 'function' ? fn : (message, extra) => {
        queue = queue.then(() => new Promise((resolve) => setImmediate(() => {
          try { fn(message, extra); } finally { resolve(); }
        })));
      };
    },
  });
}

function toolText(result, what) {
  if (result.isError) {
    throw new Error(`${what} returned isError: ${JSON.stringify(result.content)}`);
  }
  return result.content.filter((c) => c.type === 'text').map((c) => c.text).join('');
}

// The era follows from the negotiated protocol version: dated 2024-/2025- versions
// use the initialize handshake (legacy); anything newer is the stateless era.
function eraOf(version) {
  return /^202[45]-/.test(version ?? '') ? 'legacy' : 'modern';
}

async function run(kind, target) {
  const transport = makeTransport(kind, target);
  const deferred = process.env.TS_CLIENT_DEFER_DELIVERY !== '0';
  if (deferred) {
    deferDelivery(transport);
  }
  // Client.connect() hands the negotiated version to transport.setProtocolVersion()
  // when the transport has one (the HTTP transport does, stdio does not): record it.
  let negotiated;
  const original = transport.setProtocolVersion?.bind(transport);
  transport.setProtocolVersion = (version) => {
    negotiated = version;
    original?.(version);
  };

  const client = new Client({ name: 'wire-gateway-ts-e2e', version: '1.0.0' }, { capabilities: { sampling: {} } });
  const errors = [];
  client.onerror = (err) => errors.push(String(err?.message ?? err));
  const samplingRequests = [];
  client.setRequestHandler(CreateMessageRequestSchema, async (request) => {
    samplingRequests.push(request.params.messages.map((m) => m.content?.text ?? null));
    return { role: 'assistant', model: 'fixed-test-model', stopReason: 'endTurn',
             content: { type: 'text', text: SAMPLING_ANSWER } };
  });

  const opts = { timeout: REQUEST_TIMEOUT_MS };
  await client.connect(transport, opts);
  const era = eraOf(negotiated);
  const out = {
    sdkVersion,
    transport: kind,
    protocolVersion: negotiated ?? null,
    era,
    serverInfo: client.getServerVersion() ?? null,
    serverCapabilities: Object.keys(client.getServerCapabilities() ?? {}).sort(),
  };

  const tools = await client.listTools({}, opts);
  out.tools = tools.tools.map((t) => t.name).sort();

  out.echo = toolText(await client.callTool({ name: PREFIX + 'echo', arguments: { text: 'hello from TypeScript' } },
                                            undefined, opts), 'echo');
  out.add = toolText(await client.callTool({ name: PREFIX + 'add', arguments: { a: 2, b: 3 } }, undefined, opts), 'add');
  out.pid = toolText(await client.callTool({ name: PREFIX + 'pid', arguments: {} }, undefined, opts), 'pid');

  const resources = await client.listResources({}, opts);
  out.resources = resources.resources.map((r) => r.uri).sort();
  const read = await client.readResource({ uri: 'echo://info' }, opts);
  out.resourceText = read.contents.map((c) => c.text ?? '').join('');

  const prompts = await client.listPrompts({}, opts);
  out.prompts = prompts.prompts.map((p) => p.name).sort();
  const prompt = await client.getPrompt({ name: PREFIX + 'greet', arguments: { name: 'TypeScript' } }, opts);
  out.promptText = prompt.messages.map((m) => m.content?.text ?? '').join('');

  const progress = [];
  const progressResult = await client.callTool(
    { name: PREFIX + 'progress', arguments: { steps: 3 } }, undefined,
    { ...opts, onprogress: (p) => progress.push({ progress: p.progress, total: p.total, message: p.message }) });
  out.progressResult = toolText(progressResult, 'progress');
  out.progressCount = progress.length;
  out.progress = progress;

  if (era === 'legacy') {
    out.sample = toolText(await client.callTool({ name: PREFIX + 'sample', arguments: { prompt: 'Say hi to the gateway' } },
                                                undefined, opts), 'sample');
    out.samplingRequests = samplingRequests;
  } else {
    out.sample = null;
  }

  out.ping = await client.ping(opts);

  if (kind === 'http') {
    out.sessionIdAssigned = typeof transport.sessionId === 'string' && transport.sessionId.length > 0;
    await transport.terminateSession(); // DELETE; a 405 is also accepted by the SDK
  }
  const closeStart = Date.now();
  await client.close();
  out.closeMs = Date.now() - closeStart;
  out.deferredDelivery = deferred;
  out.errors = errors;
  return out;
}

const [kind, target] = process.argv.slice(2);
if (!kind || !target) {
  fail('usage: node client.mjs http URL | node client.mjs stdio JSON_SPEC');
}
try {
  const out = await run(kind, target);
  clearTimeout(watchdog);
  // Errors the SDK only reported through onerror (the run itself went through)
  // still fail the run, after the results line has been printed.
  const code = out.errors.length ? 1 : 0;
  if (code) {
    process.stderr.write(`ts-client: the SDK reported errors:\n${out.errors.join('\n')}\n`);
  }
  process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(code));
} catch (err) {
  fail(err?.stack ?? String(err));
}
