// A `live=ws` binary append frame (docs/websocket.md#binary-append-frame): the header's length
// (4 bytes, big-endian), the header (a JSON object, or its text as given), then the payload.
export function binaryFrame(header: object | string, payload: Buffer = Buffer.alloc(0)): Buffer {
  const head = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
  const length = Buffer.alloc(4);
  length.writeUInt32BE(head.length);
  return Buffer.concat([length, head, payload]);
}
