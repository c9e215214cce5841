// mcpi_coordinator.mjs: an independent *coordinator* of the mcpi worker protocol (versions
// 1 and 2), written in JavaScript (Node.js >= 18, nothing but its standard library) from
// protocol.md alone: its own strict msgpack encoder and decoder (protocol.md section 3),
// its own framing (section 2), the checks a coordinator makes (sections 5, 6.1), and the
// golden frames and kernel table read from protocol.md itself (sections 12, 13).
//
//   node mcpi_coordinator.mjs PROTOCOL_MD [--only NAME,...] -- WORKER ARGV...
//
// Starts WORKER ARGV once per scenario (a fresh process each time: versions 1 and 2, the
// kernel table, a range, ping, cancel, errors, shutdown, end of input, a fatal frame),
// drives it over its stdin and stdout, and checks every answer, the bytes where
// protocol.md says they are exact, and the exit status. One line per scenario, "ok NAME"
// or "FAIL NAME: why"; exit 0 if every scenario passed, 1 otherwise, 2 on bad usage.

import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";

const MAX_FRAME = 1048576;
const MAX_DEPTH = 16;
const MAX_TEXT = 4096;
const MAX_POINTS = 1n << 40n;
const UINT64_MAX = (1n << 64n) - 1n;
const TIMEOUT_MS = 60000; // a bound against a hang only (a loaded CI machine)

// ---------------------------------------------------------------- msgpack (section 3)

class Malformed extends Error {}

function encode(value) {
  const out = [];
  const u8 = (...bytes) => out.push(Buffer.from(bytes));
  const put = (v) => {
    if (v === null) u8(0xc0);
    else if (v === true || v === false) u8(v ? 0xc3 : 0xc2);
    else if (typeof v === "number" || typeof v === "bigint") {
      const n = BigInt(v);
      if (n < 0n) throw new Error("this coordinator never sends a negative integer");
      if (n < 128n) u8(Number(n));
      else if (n < 256n) u8(0xcc, Number(n));
      else if (n < 65536n) { const b = Buffer.alloc(3); b[0] = 0xcd; b.writeUInt16BE(Number(n), 1); out.push(b); }
      else if (n < 4294967296n) { const b = Buffer.alloc(5); b[0] = 0xce; b.writeUInt32BE(Number(n), 1); out.push(b); }
      else { const b = Buffer.alloc(9); b[0] = 0xcf; b.writeBigUInt64BE(n, 1); out.push(b); }
    } else if (typeof v === "string") {
      const s = Buffer.from(v, "utf8");
      if (s.length < 32) u8(0xa0 | s.length);
      else if (s.length < 256) u8(0xd9, s.length);
      else { const b = Buffer.alloc(3); b[0] = 0xda; b.writeUInt16BE(s.length, 1); out.push(b); }
      out.push(s);
    } else if (Array.isArray(v)) {
      if (v.length >= 16) throw new Error("arrays of 16 or more are not needed here");
      u8(0x90 | v.length);
      v.forEach(put);
    } else {
      const keys = Object.keys(v);
      if (keys.length >= 16) throw new Error("maps of 16 or more are not needed here");
      u8(0x80 | keys.length);
      for (const k of keys) { put(k); put(v[k]); }
    }
  };
  put(value);
  return Buffer.concat(out);
}

function frame(message) {
  const body = encode(message);
  const header = Buffer.alloc(4);
  header.writeUInt32BE(body.length, 0);
  return Buffer.concat([header, body]);
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

// Decodes one body strictly: one object, a map at the top, str keys only, no key twice,
// valid UTF-8, no extension types, at most 16 levels. Integers come back as BigInt (so an
// integer is never mistaken for a float), floats as Number, bin as Buffer.
function decodeBody(body) {
  let at = 0;
  const need = (n) => { if (at + n > body.length) throw new Malformed("body ends inside its object"); };
  const byte = () => { need(1); return body[at++]; };
  const str = (n) => {
    need(n);
    try { return utf8.decode(body.subarray(at, (at += n))); } catch { throw new Malformed("string is not valid UTF-8"); }
  };
  const read = (depth, isKey) => {
    const t = byte();
    if (isKey && !(t >= 0xa0 && t <= 0xbf) && t !== 0xd9 && t !== 0xda && t !== 0xdb) throw new Malformed("a map key is not a str");
    if (t <= 0x7f) return BigInt(t);
    if (t >= 0xe0) return BigInt(t - 256);
    if (t >= 0xa0 && t <= 0xbf) return str(t & 0x1f);
    const container = (n, isMap) => {
      if (depth + 1 > MAX_DEPTH) throw new Malformed("nesting deeper than 16");
      if (!isMap) { const a = []; for (let i = 0; i < n; i++) a.push(read(depth + 1, false)); return a; }
      const m = new Map();
      for (let i = 0; i < n; i++) {
        const k = read(depth + 1, true);
        if (m.has(k)) throw new Malformed(`key ${JSON.stringify(k)} twice in one map`);
        m.set(k, read(depth + 1, false));
      }
      return m;
    };
    if (t >= 0x80 && t <= 0x8f) return container(t & 0x0f, true);
    if (t >= 0x90 && t <= 0x9f) return container(t & 0x0f, false);
    const u = (n) => { need(n); const v = body.readUIntBE(at, n); at += n; return v; };
    switch (t) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: case 0xc5: case 0xc6: { const n = u(t === 0xc4 ? 1 : t === 0xc5 ? 2 : 4); need(n); return Buffer.from(body.subarray(at, (at += n))); }
      case 0xca: need(4); at += 4; return body.readFloatBE(at - 4);
      case 0xcb: need(8); at += 8; return body.readDoubleBE(at - 8);
      case 0xcc: return BigInt(u(1));
      case 0xcd: return BigInt(u(2));
      case 0xce: return BigInt(u(4));
      case 0xcf: need(8); at += 8; return body.readBigUInt64BE(at - 8);
      case 0xd0: need(1); at += 1; return BigInt(body.readInt8(at - 1));
      case 0xd1: need(2); at += 2; return BigInt(body.readInt16BE(at - 2));
      case 0xd2: need(4); at += 4; return BigInt(body.readInt32BE(at - 4));
      case 0xd3: need(8); at += 8; return body.readBigInt64BE(at - 8);
      case 0xd9: return str(u(1));
      case 0xda: return str(u(2));
      case 0xdb: return str(u(4));
      case 0xdc: return container(u(2), false);
      case 0xdd: return container(u(4), false);
      case 0xde: return container(u(2), true);
      case 0xdf: return container(u(4), true);
      default: throw new Malformed(`extension type or unused byte 0x${t.toString(16)}`);
    }
  };
  const value = read(1, false);
  if (at !== body.length) throw new Malformed("bytes left over after the object");
  if (!(value instanceof Map)) throw new Malformed("the top-level object is not a map");
  return value;
}

// ---------------------------------------------------------------- field checks (section 4.2)

const isUint = (v) => typeof v === "bigint" && v >= 0n && v <= UINT64_MAX;
const isPositive = (v) => isUint(v) && v >= 1n;
const isText = (v) => typeof v === "string" && [...v].length <= MAX_TEXT;
const isTexts = (v) => Array.isArray(v) && v.length <= 64 && v.every(isText);
const isSeconds = (v) => (typeof v === "number" && Number.isFinite(v) && v >= 0) || (typeof v === "bigint" && v >= 0n);

const FIELDS = {
  welcome: [["version", isPositive], ["worker", isText], ["pid", isUint], ["host", isText], ["kernels", isTexts],
    ["max_inflight", isPositive], ["max_frame", isPositive],
    ["max_points", (v) => isUint(v) && v >= 1n && v <= MAX_POINTS], ["jobs", isPositive, "opt"],
    ["implementations", isTexts, "opt"]],
  result: [["id", isUint], ["inside", isUint], ["points", (v) => isUint(v) && v <= MAX_POINTS], ["elapsed_s", isSeconds],
    ["insides", (v) => Array.isArray(v) && v.length <= 4096 && v.every(isUint), "opt"], ["implementation", isText, "opt"]],
  pong: [["id", isUint]],
  error: [["id", (v) => v === null || isUint(v)], ["code", isText], ["message", isText]],
};

// A worker message as a plain object, or a thrown Error naming the rule it breaks.
function check(map) {
  const type = map.get("type");
  if (typeof type !== "string" || !(type in FIELDS)) throw new Error(`a message of type ${JSON.stringify(String(type))}`);
  const message = { type };
  for (const [name, valid, optional] of FIELDS[type]) {
    if (!map.has(name)) {
      if (optional) continue;
      throw new Error(`${type} without '${name}'`);
    }
    if (!valid(map.get(name))) throw new Error(`${type}: '${name}' is ${String(map.get(name))}`);
    message[name] = map.get(name);
  }
  return message;
}

// ---------------------------------------------------------------- a worker process

class Worker {
  constructor(argv) {
    this.child = spawn(argv[0], argv.slice(1), { stdio: ["pipe", "pipe", "pipe"] });
    this.buffer = Buffer.alloc(0);
    this.raw = [];
    this.messages = [];
    this.waiting = null;
    this.ended = false;
    this.broken = null;
    this.stderr = "";
    this.child.stdin.on("error", () => {}); // a worker that stopped reading: EPIPE is no failure here
    this.child.stderr.on("data", (d) => { this.stderr = (this.stderr + d).slice(-4000); });
    this.child.stdout.on("data", (d) => this.feed(d));
    this.child.stdout.on("end", () => { this.ended = true; this.wake(); });
    this.exited = new Promise((resolve) => this.child.on("exit", (code, signal) => resolve(code ?? `signal ${signal}`)));
  }

  feed(data) {
    this.raw.push(data);
    this.buffer = Buffer.concat([this.buffer, data]);
    while (this.broken === null && this.buffer.length >= 4) {
      const length = this.buffer.readUInt32BE(0);
      // Judged as soon as the header is in, before any of the body is waited for.
      if (length === 0 || length > MAX_FRAME) { this.broken = `a frame of ${length} bytes`; break; }
      if (this.buffer.length < 4 + length) break;
      const body = this.buffer.subarray(4, 4 + length);
      this.buffer = this.buffer.subarray(4 + length);
      try {
        this.messages.push(check(decodeBody(body)));
      } catch (error) {
        this.broken = error.message;
      }
    }
    this.wake();
  }

  wake() { if (this.waiting) { const w = this.waiting; this.waiting = null; w(); } }

  send(...messages) { this.sendBytes(Buffer.concat(messages.map((m) => (Buffer.isBuffer(m) ? m : frame(m))))); }
  sendBytes(data) { this.child.stdin.write(data); }
  closeStdin() { this.child.stdin.end(); }

  // The next message; throws on a broken stream or end of output.
  async receive() {
    for (;;) {
      if (this.messages.length) return this.messages.shift();
      if (this.broken !== null) throw new Error(`the worker broke the protocol: ${this.broken}`);
      if (this.ended) {
        if (this.buffer.length) throw new Error("end of output inside a frame");
        throw new Error("end of output where a message was due");
      }
      await new Promise((resolve) => { this.waiting = resolve; });
    }
  }

  // Every message until end of output (which must come at a frame boundary).
  async untilEof() {
    const rest = [];
    for (;;) {
      if (this.messages.length) { rest.push(this.messages.shift()); continue; }
      if (this.broken !== null) throw new Error(`the worker broke the protocol: ${this.broken}`);
      if (this.ended) {
        if (this.buffer.length) throw new Error("end of output inside a frame");
        return rest;
      }
      await new Promise((resolve) => { this.waiting = resolve; });
    }
  }

  kill() { if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGKILL"); }
}

// ---------------------------------------------------------------- protocol.md's vectors

function goldenFrames(text) {
  const frames = {};
  for (const [, name, json, hex] of text.matchAll(/```golden:([a-z0-9_]+)\n# ([^\n]*)\n([\s\S]*?)```/g)) {
    frames[name] = { json: JSON.parse(json), bytes: Buffer.from(hex.replace(/\s+/g, ""), "hex") };
  }
  return frames;
}

function kernelTable(text) {
  const block = /```golden-kernels\n([\s\S]*?)```/.exec(text)[1];
  return block.split("\n").filter((l) => l.trim() && !l.startsWith("#")).map((l) => {
    const [kernel, seed, stream, points, inside] = l.trim().split(/\s+/);
    return { kernel, seed: BigInt(seed), stream: BigInt(stream), points: BigInt(points), inside: BigInt(inside) };
  });
}

// ---------------------------------------------------------------- checks

function expect(condition, why) { if (!condition) throw new Error(why); }
const show = (m) => JSON.stringify(m, (_, v) => (typeof v === "bigint" ? Number(v) : v));

// The welcome checked as section 5 says a coordinator must.
function checkWelcome(welcome, offered) {
  expect(welcome.type === "welcome", `first message ${show(welcome)}, not a welcome`);
  expect(offered.includes(Number(welcome.version)), `version ${welcome.version} was not offered (${offered})`);
  const jobs = welcome.jobs ?? 1n;
  expect(jobs <= welcome.max_inflight && jobs <= 1024n, `jobs ${jobs} above max_inflight or 1024`);
  const impls = welcome.implementations ?? [];
  expect(impls.length === 0 || impls.length === welcome.kernels.length, "implementations not one per kernel");
  return welcome;
}

async function greeted(argv, versions) {
  const worker = new Worker(argv);
  worker.send({ type: "hello", versions, client: "mcpi-coordinator.mjs/1" });
  worker.welcome = checkWelcome(await worker.receive(), versions);
  return worker;
}

// A result checked against its request (sections 5 and 6.1).
function checkResult(message, request) {
  expect(message.type === "result" && message.id === BigInt(request.id), `not the result of ${request.id}: ${show(message)}`);
  const streams = BigInt(request.streams ?? 1);
  const points = streams * BigInt(request.points);
  expect(message.points === points, `points ${message.points} for a request of ${points}`);
  expect(message.inside <= points, `inside ${message.inside} of ${points}`);
  const range = request.streams !== undefined && request.streams !== 1 || request.group !== undefined;
  if (!range) {
    expect(message.insides === undefined, "insides for a plain sample");
    return message;
  }
  const group = BigInt(request.group ?? request.streams);
  const groups = (streams + group - 1n) / group;
  expect(message.insides !== undefined && BigInt(message.insides.length) === groups, `insides for ${groups} groups: ${show(message.insides)}`);
  message.insides.forEach((n, i) => {
    const inGroup = (BigInt(i) + 1n) * group > streams ? streams - BigInt(i) * group : group;
    expect(n <= inGroup * BigInt(request.points), `group ${i} counts more than its points`);
  });
  expect(message.insides.reduce((a, b) => a + b, 0n) === message.inside, "insides do not add up to inside");
  return message;
}

const sample = (id, fields) => ({ type: "sample", id, seed: 12345, stream: 0, points: 1000, kernel: "numpy", ...fields });

// ---------------------------------------------------------------- scenarios

function scenarios(golden, table) {
  return {
    async handshake_v2(argv) {
      const worker = await greeted(argv, [1, 2]);
      expect(worker.welcome.version === 2n, `chose version ${worker.welcome.version} of [1, 2]`);
      worker.send({ type: "shutdown" });
      return worker;
    },

    async handshake_v1_plain_only(argv) {
      const worker = await greeted(argv, [1]);
      expect(worker.welcome.version === 1n, "version 1 not chosen");
      worker.send(sample(1, { streams: 2 }), sample(2, { streams: 1 }));
      const answers = [await worker.receive(), await worker.receive()];
      const refused = answers.find((m) => m.id === 1n);
      expect(refused?.type === "error" && refused.code === "invalid_request", `a range on version 1: ${show(refused)}`);
      checkResult(answers.find((m) => m.id === 2n), sample(2, { streams: 1 }));
      worker.send({ type: "shutdown" });
      return worker;
    },

    async golden_kernel_table(argv) {
      const worker = await greeted(argv, [1, 2]);
      const offered = new Set(worker.welcome.kernels);
      const rows = table.filter((r) => offered.has(r.kernel));
      expect(rows.length > 0, "the worker offers no kernel of the table");
      const depth = Number(worker.welcome.max_inflight < 4n ? worker.welcome.max_inflight : 4n);
      const requests = rows.map((r, i) => ({ type: "sample", id: 100 + i, seed: r.seed, stream: r.stream, points: r.points, kernel: r.kernel }));
      let next = 0;
      let done = 0;
      while (next < Math.min(depth, requests.length)) worker.send(requests[next++]);
      while (done < requests.length) {
        const answer = await worker.receive();
        const i = Number(answer.id) - 100;
        expect(i >= 0 && i < requests.length, `an answer to ${answer.id}, never sent`);
        checkResult(answer, requests[i]);
        expect(answer.inside === rows[i].inside, `${rows[i].kernel} ${rows[i].seed} ${rows[i].stream} ${rows[i].points}: ${answer.inside}, not ${rows[i].inside}`);
        done++;
        if (next < requests.length) worker.send(requests[next++]);
      }
      worker.send({ type: "shutdown" });
      return worker;
    },

    async golden_range(argv) {
      const worker = await greeted(argv, [2]);
      worker.sendBytes(golden.range_sample.bytes);
      const expected = golden.range_result.json;
      const answer = checkResult(await worker.receive(), golden.range_sample.json);
      expect(answer.inside === BigInt(expected.inside), `inside ${answer.inside}`);
      expect(show(answer.insides) === show(expected.insides), `insides ${show(answer.insides)}`);
      worker.send({ type: "shutdown" });
      return worker;
    },

    async golden_ping_pong_and_error_bytes(argv) {
      const worker = await greeted(argv, [1, 2]);
      const before = Buffer.concat(worker.raw).length;
      worker.sendBytes(golden.ping.bytes);
      expect((await worker.receive()).type === "pong", "no pong");
      worker.send(sample(2, { kernel: "cuda" }));
      const error = await worker.receive();
      expect(error.type === "error" && error.id === 2n && error.code === "unknown_kernel", `kernel cuda: ${show(error)}`);
      worker.send({ type: "shutdown" });
      await worker.untilEof();
      const after = Buffer.concat(worker.raw).subarray(before);
      expect(after.subarray(0, golden.pong.bytes.length).equals(golden.pong.bytes), "the pong is not the golden bytes");
      // Messages are for people (section 8): only mcpi-worker's are the golden ones.
      worker.errorBytesExact = after.subarray(golden.pong.bytes.length).equals(golden.error.bytes);
      return worker;
    },

    async cancel_running(argv) {
      const worker = await greeted(argv, [1, 2]);
      worker.send(sample(1, { points: Number(worker.welcome.max_points) }));
      worker.sendBytes(golden.cancel.bytes);
      const answer = await worker.receive();
      expect(answer.type === "error" && answer.id === 1n && answer.code === "cancelled", `cancel: ${show(answer)}`);
      worker.send({ type: "ping", id: 2 }, golden.cancel.bytes); // answered already: no effect
      expect((await worker.receive()).type === "pong", "no pong after the cancel");
      worker.send({ type: "shutdown" });
      return worker;
    },

    async before_hello_then_hello(argv) {
      const worker = new Worker(argv);
      worker.sendBytes(golden.ping.bytes);
      const refused = await worker.receive();
      expect(refused.type === "error" && refused.id === 7n && refused.code === "handshake_required", `ping before hello: ${show(refused)}`);
      worker.send({ type: "hello", versions: [2], client: "x" });
      checkWelcome(await worker.receive(), [2]);
      worker.sendBytes(golden.ping.bytes);
      expect((await worker.receive()).type === "pong", "no pong after the late hello");
      worker.send({ type: "shutdown" });
      return worker;
    },

    async duplicate_and_busy(argv) {
      const worker = await greeted(argv, [1, 2]);
      const room = Number(worker.welcome.max_inflight);
      expect(room <= 1024, "max_inflight above what this test fills");
      const big = Number(worker.welcome.max_points);
      const fill = [];
      for (let i = 0; i < room; i++) fill.push(sample(10 + i, { stream: i, points: big }));
      worker.send(...fill, sample(10, { kernel: "cuda" }), sample(5000, {}));
      const early = [await worker.receive(), await worker.receive()];
      const duplicate = early.find((m) => m.id === 10n);
      const busy = early.find((m) => m.id === 5000n);
      expect(duplicate?.code === "duplicate_id", `a duplicate id: ${show(duplicate)}`);
      expect(busy?.code === "busy", `beyond max_inflight: ${show(busy)}`);
      worker.send({ type: "shutdown" });
      const rest = await worker.untilEof();
      expect(rest.length === room && rest.every((m) => m.type === "error" && m.code === "cancelled"), `after shutdown: ${rest.length} answers`);
      return worker;
    },

    async eof_cancels_and_exits_0(argv) {
      const worker = await greeted(argv, [1, 2]);
      worker.send(sample(1, { points: Number(worker.welcome.max_points) }));
      worker.closeStdin();
      const rest = await worker.untilEof();
      expect(rest.length === 1 && rest[0].code === "cancelled", `end of input: ${show(rest)}`);
      return worker;
    },

    async fatal_text_instead_of_hello(argv) {
      const worker = new Worker(argv);
      worker.sendBytes(Buffer.from("hello world\n"));
      // One error with a nil id and the fatal code, and nothing after it.
      const all = await worker.untilEof();
      expect(all.length === 1, `${all.length} messages for a fatal frame: ${show(all)}`);
      const error = all[0];
      expect(error.type === "error" && error.id === null && error.code === golden.fatal_error.json.code, `fatal: ${show(error)}`);
      worker.expectedStatus = 3;
      return worker;
    },
  };
}

// ---------------------------------------------------------------- main

async function run(name, scenario, argv) {
  let worker;
  let timer;
  try {
    const timeout = new Promise((_, reject) => { timer = setTimeout(() => reject(new Error("no answer within 60 s")), TIMEOUT_MS); });
    worker = await Promise.race([scenario(argv), timeout]);
    if (!worker.child.stdin.writableEnded) worker.closeStdin();
    const rest = await Promise.race([worker.untilEof(), timeout]);
    expect(rest.length === 0, `${rest.length} messages after the end: ${show(rest)}`);
    const status = await Promise.race([worker.exited, timeout]);
    expect(status === (worker.expectedStatus ?? 0), `exit ${status}`);
    const note = worker.errorBytesExact === undefined ? "" : ` (error bytes ${worker.errorBytesExact ? "" : "not "}golden)`;
    console.log(`ok ${name}${note}`);
    return true;
  } catch (error) {
    console.log(`FAIL ${name}: ${error.message}${worker?.stderr ? ` [stderr: ${worker.stderr.trim().split("\n").pop()}]` : ""}`);
    return false;
  } finally {
    clearTimeout(timer);
    worker?.kill();
  }
}

async function main() {
  const dash = process.argv.indexOf("--");
  const options = process.argv.slice(3, dash);
  const only = options[0] === "--only" && options.length === 2 ? options[1].split(",") : null;
  if (dash < 3 || dash === process.argv.length - 1 || (options.length && only === null)) {
    console.error("usage: node mcpi_coordinator.mjs PROTOCOL_MD [--only NAME,...] -- WORKER ARGV...");
    process.exit(2);
  }
  const text = readFileSync(process.argv[2], "utf8");
  const argv = process.argv.slice(dash + 1);
  const all = scenarios(goldenFrames(text), kernelTable(text));
  const unknown = (only ?? []).filter((name) => !(name in all));
  if (unknown.length) {
    console.error(`mcpi_coordinator.mjs: no scenario ${unknown.join(", ")}; there are ${Object.keys(all).join(", ")}`);
    process.exit(2);
  }
  let failed = 0;
  for (const [name, scenario] of Object.entries(all)) {
    if (only === null || only.includes(name)) {
      if (!(await run(name, scenario, argv))) failed++;
    }
  }
  process.exit(failed ? 1 : 0);
}

main();
