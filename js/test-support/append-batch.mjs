// Appends many messages to a JSON stream in one request, with a plain POST: a JSON array body is
// the protocol's batch append. (`DurableStream.append` appends its value as one message.)
export async function appendBatch(url, messages) {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(messages),
  });
  if (!res.ok) throw new Error(`batch append: ${res.status} ${await res.text()}`);
}
