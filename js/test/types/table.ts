// Compiled by types.test.mjs (never run): the table API's types accept what its runtime takes and
// give back what it returns, as table.test.mjs uses them.
import { change, storageStore, table, type KeyedTable, type TableSnapshot, type TableUpdate } from 'edgestream';

interface User {
  name: string;
}

export async function usage(storage: Storage, saved: TableSnapshot<User> | undefined): Promise<string[]> {
  const users: KeyedTable<User> = table<User>({
    url: new URL('https://example.com/v1/stream/users'),
    live: 'sse',
    from: saved,
    saveEveryMs: 500,
    onInvalid: 'skip',
    signal: AbortSignal.timeout(1000),
  });
  const stored = table<User>({ url: 'https://example.com/v1/stream/users', store: storageStore<User>(storage, 'users') });
  stored.cancel();
  const unsubscribe = users.subscribe((update: TableUpdate<User>) => {
    for (const c of update.changes) if (c.operation !== 'delete' && c.value) console.log(c.key, c.value.name, c.previous?.name);
  });
  await users.ready();
  unsubscribe();
  const ada: User | undefined = users.get('user', 'u1');
  const snapshot: TableSnapshot<User> = users.snapshot();
  const [type, key, value] = snapshot.rows[0];
  console.log(ada?.name, type, key, value.name, users.size, users.count('user'), users.has('user', 'u2'));
  const messages = [change.insert('user', 'u1', { name: 'Ada' }), change.update('user', 'u1', { name: 'A' }, { txid: 't1' }), change.delete('user', 'u1'), change.reset()];
  console.log(messages.length, users.types(), users.offset, users.upToDate, users.closed);
  await users.finished;
  return [...users.keys('user')];
}
