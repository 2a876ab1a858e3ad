// The /v1/batch result archive in the browser: its entries (serve_app/batch.py writes results/<name>
// and log.json, one row per input file, zip entries included) and what the batch table shows of a
// log row. Plain JavaScript, no build step; also loaded by Node in tests/test_serve_units.py.
"use strict";

(function (root) {
  const END_OF_CENTRAL_DIRECTORY = 0x06054b50;
  const CENTRAL_FILE_HEADER = 0x02014b50;
  const LOCAL_FILE_HEADER = 0x04034b50;

  async function inflateRaw(data) {
    if (typeof DecompressionStream === "undefined") throw new Error("this browser cannot inflate a ZIP entry");
    const stream = new Blob([data]).stream().pipeThrough(new DecompressionStream("deflate-raw"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  // name -> async () => Uint8Array, for every entry of a ZIP archive (an ArrayBuffer or Uint8Array).
  // Stored (0) and deflated (8) entries: the two that Python's zipfile writes.
  function zipEntries(archive) {
    const bytes = archive instanceof Uint8Array ? archive : new Uint8Array(archive);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    let end = -1;
    for (let i = bytes.length - 22; i >= Math.max(0, bytes.length - 22 - 0xffff); i--) {
      if (view.getUint32(i, true) === END_OF_CENTRAL_DIRECTORY) { end = i; break; }
    }
    if (end < 0) throw new Error("not a ZIP archive");
    const count = view.getUint16(end + 10, true);
    const names = new TextDecoder();
    const entries = new Map();
    let p = view.getUint32(end + 16, true);
    for (let n = 0; n < count; n++) {
      if (p + 46 > bytes.length || view.getUint32(p, true) !== CENTRAL_FILE_HEADER) throw new Error("corrupt ZIP directory");
      const method = view.getUint16(p + 10, true);
      const size = view.getUint32(p + 20, true);
      const nameLength = view.getUint16(p + 28, true);
      const skip = nameLength + view.getUint16(p + 30, true) + view.getUint16(p + 32, true);
      const local = view.getUint32(p + 42, true);
      const name = names.decode(bytes.subarray(p + 46, p + 46 + nameLength));
      entries.set(name, async () => {
        if (view.getUint32(local, true) !== LOCAL_FILE_HEADER) throw new Error(`corrupt ZIP entry ${name}`);
        const start = local + 30 + view.getUint16(local + 26, true) + view.getUint16(local + 28, true);
        const data = bytes.subarray(start, start + size);
        if (method === 0) return data;
        if (method === 8) return inflateRaw(data);
        throw new Error(`ZIP entry ${name}: unsupported compression method ${method}`);
      });
      p += 46 + skip;
    }
    return entries;
  }

  // The per-file log of a batch archive: [{file, output, status, http_status, model, brightness, cache, ms, error, empty, notice}].
  async function readBatchLog(entries) {
    const read = entries.get("log.json");
    if (!read) throw new Error("the ZIP has no log.json");
    return JSON.parse(new TextDecoder().decode(await read()));
  }

  // What the Status column says of a log row, and its class ("", "warning" or "error"); errors read
  // as the single-image ones do ("415: ...").
  function logStatus(row) {
    if (row.status === "ok") return row.empty ? { text: "ok: no subject found", className: "warning" } : { text: "ok", className: "" };
    return { text: `${row.http_status}: ${row.error}`, className: "error" };
  }

  const MEDIA_TYPES = { png: "image/png", jpg: "image/jpeg", jpeg: "image/jpeg", webp: "image/webp" };
  const mediaType = (name) => MEDIA_TYPES[(name.split(".").pop() || "").toLowerCase()] || "application/octet-stream";

  const api = { zipEntries, readBatchLog, logStatus, mediaType };
  Object.assign(root, api);
  if (typeof module !== "undefined" && module.exports) module.exports = api;
})(typeof window !== "undefined" ? window : globalThis);
