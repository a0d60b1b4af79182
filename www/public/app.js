// The edgestream demo: three views, each one durable stream, built on the `edgestream` package
// exactly as an app of yours would be. Each view keeps what it has rendered and the offset it
// reached in localStorage, so a reload resumes from there: nothing is downloaded twice.
import { stream, table, change, DurableStream, IdempotentProducer } from 'edgestream';

const API = `${location.origin}/v1/stream`;
const $ = (id) => document.getElementById(id);
/**
 * An access token for a server with access control on (README, Access tokens), given as this
 * page's `?token=`: sent with every request, as `?token=` (EventSource and WebSocket cannot send
 * headers) and as a bearer token on appends.
 */
const token = new URLSearchParams(location.search).get('token') || undefined;
const params = token ? { token } : undefined;

/** localStorage with JSON values; a full or disabled storage only loses the resume point. */
const saved = {
  get(key, fallback) {
    try {
      const raw = localStorage.getItem(`edgestream-demo:${key}`);
      return raw === null ? fallback : JSON.parse(raw);
    } catch {
      return fallback;
    }
  },
  set(key, value) {
    try {
      localStorage.setItem(`edgestream-demo:${key}`, JSON.stringify(value));
    } catch {}
  },
  remove(key) {
    try {
      localStorage.removeItem(`edgestream-demo:${key}`);
    } catch {}
  },
};

/** `ms` if it is a time a Date can show, else undefined: anyone can append anything to a stream. */
const time = (ms) => (typeof ms === 'number' && !Number.isNaN(new Date(ms).getTime()) ? ms : undefined);
/** A plain object (not null, not an array). */
const isObject = (value) => value !== null && typeof value === 'object' && !Array.isArray(value);

// ---- the live connection of the visible view ----

let mode = saved.get('mode', 'auto');
// What was stored may be another version's, or edited by hand: only a mode the page offers.
if (![...$('mode').options].some((option) => option.value === mode)) mode = 'auto';
let active = null; // { handle, controller, path, hadBatch, stopped }
/** The path of the view whose reader failed last, until that view reads a batch again. */
let failing = null;
/**
 * Creates the stream if needed (an identical PUT is a no-op), then follows it: from `offset`
 * with `stream()`, or with `open(url, signal)` (a live table), calling `onBatch` with each
 * batch or update. `onReset` drops what the view stored of the stream, when the stream no
 * longer has it.
 */
async function follow({ path, contentType, channel, offset, incarnation, open, onBatch, onReset }) {
  stopFollowing();
  const controller = new AbortController();
  const url = `${API}/${path}`;
  active = { handle: null, controller, path, hadBatch: false, stopped: false };
  const mine = active;
  $('info-url').textContent = `/v1/stream/${path}`;
  showProblem('');
  try {
    await ensureStream(url, contentType, channel, path, controller.signal);
  } catch (error) {
    return stop(mine, error);
  }
  if (controller.signal.aborted) return;
  // The client revalidates the browser's HTTP cache on every read, so a stream deleted and
  // created again is never read from the old one's cached pages.
  // With the incarnation stored beside the offset, a stream deleted and created again since
  // fails the reader (STREAM_REPLACED) rather than go on from an offset that is not its own.
  const handle = open ? open(url, controller.signal) : stream({ url, params, offset, incarnation, live: mode, signal: controller.signal });
  mine.handle = handle;
  handle.subscribe(
    (batch) => {
      onBatch(batch);
      // Only a batch the view took shows the view as working again.
      mine.hadBatch = true;
      if (failing === path) failing = null;
      showStatus();
    },
    (error) => {
      if (controller.signal.aborted) return;
      // Those the view recovers from are below; any other refusal stops it.
      const recovers = ['NOT_FOUND', 'GONE', 'INVALID_OFFSET', 'STREAM_REPLACED'].includes(error?.code);
      if (!recovers && refused(error)) return stop(mine, error);
      console.error('edgestream demo:', error);
      failing = path;
      setState('reconnecting');
      if (error?.code === 'NOT_FOUND' || error?.code === 'GONE') {
        // The stream was deleted (or the server's state wiped): create it again, and drop what
        // this page kept of the old one.
        created.delete(url);
        onReset?.();
      } else if (error?.code === 'INVALID_OFFSET' || error?.code === 'STREAM_REPLACED') {
        // The stream was deleted and created again meanwhile (the stored offset is past its
        // end, or it names another incarnation): what the page kept is not this stream's; read
        // it from the start.
        onReset?.();
      }
      // Start over (from the stored offset, or from the start after a reset) in a moment.
      setTimeout(() => active === mine && restartView(), 2000);
    },
  );
}

function stopFollowing() {
  active?.controller.abort();
  active = null;
}

/** A refusal that asking again will not change: a 4xx other than a timeout (408) or a rate limit (429). */
const refused = (error) => error?.status >= 400 && error.status < 500 && error.status !== 408 && error.status !== 429;

/** Gives up on the view's stream after a refusal, and says why. */
function stop(mine, error) {
  if (mine.controller.signal.aborted) return;
  console.error('edgestream demo:', error);
  mine.stopped = true;
  // Nothing more will load: a list left busy would keep a screen reader from announcing it.
  $('messages').removeAttribute('aria-busy');
  const auth = error.status === 401 || error.status === 403;
  showProblem(
    auth
      ? `The server requires an access token${token ? ' and refused this one' : ''} (${error.status}): open this page as /?token=<token>, with a token for read, append and create (README, Access tokens).`
      : `The server refused /v1/stream/${mine.path}, so this view has stopped: ${error.message}`,
  );
  showStatus();
}

function showProblem(text) {
  const problem = $('problem');
  if (problem.textContent !== text) problem.textContent = text;
  problem.hidden = !text;
}

/** The streams this page created (or found), so that a restart does not PUT them again. */
const created = new Set();
/** Creates the stream at `url` unless it exists; throws a refusal (see `refused`) at once. */
async function ensureStream(url, contentType, channel, path, signal) {
  if (created.has(url)) return;
  for (let attempt = 0; !signal.aborted; attempt++) {
    try {
      await DurableStream.create({ url, params, contentType, channel });
      created.add(url);
      return;
    } catch (e) {
      // Offline or a transient error: keep trying (until the view is left); the UI shows the state.
      if (signal.aborted) return;
      if (refused(e)) throw e;
      failing = path;
      setState(navigator.onLine ? 'reconnecting' : 'offline');
      await new Promise((r) => setTimeout(r, Math.min(4000, 250 * 2 ** attempt)));
    }
  }
}

/** Shows `state` in the status pill, a live region: only a change is written (and announced). */
function setState(state) {
  const pill = $('state');
  if (pill.dataset.state === state && pill.textContent === state) return;
  pill.dataset.state = state;
  pill.textContent = state;
}

function showStatus() {
  const handle = active?.handle;
  $('info-offset').textContent = handle ? handle.offset : '-';
  $('info-mode').textContent = handle ? handle.mode : '-';
  // Refused for good (see `stop`): a reload, another view or mode asks again.
  if (active?.stopped) return setState('stopped');
  if (!navigator.onLine) return setState('offline');
  // The reader of this view failed (it is restarted in a moment): the handle's status and
  // upToDate are those of its last good response, so they cannot tell.
  if (active && failing === active.path) return setState('reconnecting');
  // The reader cannot reach the server and is trying again (it does, for as long as it takes),
  // whether or not it had connected before.
  if (handle?.retrying) return setState('reconnecting');
  if (!handle || !active.hadBatch) return setState('connecting');
  if (handle.status === 0 || handle.status >= 500) return setState('reconnecting');
  setState(handle.upToDate ? 'live' : 'catching up');
}
setInterval(showStatus, 500);
addEventListener('online', showStatus);
addEventListener('offline', showStatus);

/**
 * What to tell the user of a write that failed. A request that reached no server says so
 * (fetch's own words are "Failed to fetch"), and whether the browser knows it is offline.
 */
function failure(err) {
  if (!(err instanceof TypeError) && err?.code !== 'NETWORK_ERROR') return err?.message ?? String(err);
  return navigator.onLine ? 'The server could not be reached: try again in a moment.' : 'This browser is offline: try again once it is back online.';
}

/** Tells the user of a write that failed (a button's click has no one else to tell). */
function report(writing) {
  writing.catch((err) => alert(failure(err)));
}

/** The page's last append: the next one starts once it has settled. */
let posting = Promise.resolve();

/**
 * Appends to the stream at `path`, once the page's earlier appends have settled: sent together,
 * a slow one would land after those made behind it (chat messages, two Saves of a
 * row out of order).
 */
function post(path, body) {
  const sent = posting.then(() => send(path, body));
  posting = sent.catch(() => {});
  return sent;
}

/** POSTs `body` as JSON (the tail's text lines go through its producer instead). */
async function send(path, body) {
  const res = await fetch(`${API}/${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(token && { authorization: `Bearer ${token}` }) },
    body: JSON.stringify(body),
  });
  if (!res.ok) throw new Error(`append failed: ${res.status} ${await res.text()}`);
  // Read to its end, even empty: a body left unread is an aborted request to the browser.
  await res.arrayBuffer();
}

/** Whether `el` is scrolled to its end (within a few pixels), where new content keeps it. */
const atBottom = (el) => el.scrollHeight - el.scrollTop - el.clientHeight < 8;

const newId = () => (crypto.randomUUID?.() ?? `${Date.now()}-${Math.random()}`).slice(0, 8);
const clock = (ms) => new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });

// ---- Rooms: chat channels named by path ----

/** The "All rooms" entry: the `rooms` channel, fed by every `rooms/<name>` stream. */
const ALL = '*';
/**
 * What a room may be called (a path segment below `rooms/`). index.html's pattern takes the same
 * with capitals and spaces around it, which the room form folds and trims.
 */
const ROOM_NAME = /^[a-z0-9-]{1,32}$/;
const isRoomName = (name) => typeof name === 'string' && ROOM_NAME.test(name);
const ROOM_NAME_RULE = 'A room name is 1 to 32 letters, digits and dashes (taken in lowercase).';

/**
 * Whether `m` is a chat message this demo can show. Anyone can append any JSON to a room, and
 * what is not a message is skipped, so that it cannot stop the messages after it.
 */
function isMessage(m) {
  return isObject(m) && typeof m.user === 'string' && typeof m.text === 'string' && time(m.at) !== undefined;
}

/** What tells a message's copies apart from other messages: its room, writer and id (if it has one). */
const messageKey = (m) => (typeof m.id === 'string' ? JSON.stringify([m.room ?? null, m.user, m.id]) : undefined);

/**
 * The message whose send failed, while its text is back in the box: it may have landed (the
 * answer was lost, not the request), so sent again unchanged it keeps its id, and shows once.
 */
let unsent = null;

const rooms = {
  // Stored lists and rooms are taken only as far as they name rooms (they may be another
  // version's, or edited by hand).
  list: ((stored) => (Array.isArray(stored) ? stored.filter(isRoomName) : ['lobby', 'dev', 'random']))(saved.get('rooms', null)),
  current: ((stored) => (stored === ALL || isRoomName(stored) ? stored : 'lobby'))(saved.get('room', 'lobby')),
  /** Per room: the messages rendered so far and the offset after them. */
  cache(room) {
    const cache = saved.get(`room:${room}`, null);
    if (!isObject(cache) || typeof cache.offset !== 'string' || !Array.isArray(cache.messages)) return { offset: '-1', messages: [] };
    const incarnation = typeof cache.incarnation === 'string' ? cache.incarnation : undefined;
    return { offset: cache.offset, incarnation, messages: cache.messages.filter(isMessage) };
  },
  renderList() {
    const ul = $('room-list');
    ul.replaceChildren(
      ...[ALL, ...this.list].map((room) => {
        const li = document.createElement('li');
        const button = document.createElement('button');
        button.type = 'button';
        button.textContent = room === ALL ? 'All rooms' : `#${room}`;
        if (room === ALL) button.id = 'all-rooms';
        if (room === this.current) button.setAttribute('aria-current', 'true');
        button.addEventListener('click', () => this.open(room));
        li.append(button);
        return li;
      }),
    );
  },
  /** A message; `room` names its room in the All rooms view. */
  renderMessage(m, room) {
    const li = document.createElement('li');
    if (typeof m.id === 'string' || typeof m.id === 'number') li.dataset.id = m.id;
    if (room) {
      const where = document.createElement('span');
      where.className = 'room';
      where.textContent = `#${room}`;
      li.append(where);
    }
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = m.user;
    const text = document.createElement('span');
    text.className = 'text';
    text.textContent = m.text;
    // Each part takes its own direction, isolated from the others: a right-to-left name or
    // message would otherwise be reordered with its neighbours (the time's digits on both sides).
    who.dir = text.dir = 'auto';
    const time = document.createElement('time');
    time.dateTime = new Date(m.at).toISOString();
    time.textContent = clock(m.at);
    li.append(who, text, time);
    return li;
  },
  open(room) {
    const all = room === ALL;
    this.current = room;
    saved.set('room', room);
    this.renderList();
    $('room-title').textContent = all ? 'All rooms' : `#${room}`;
    // The All rooms view reads; messages are written in a room.
    $('message').disabled = all;
    $('message-form').querySelector('button').disabled = all;
    $('message').placeholder = all ? 'Open a room to write in it' : 'Say something';
    const cache = this.cache(room);
    const list = $('messages');
    // The list is a live region: the backlog (up to 500 cached messages, then what the reader
    // catches up on) is rendered busy, so that a screen reader announces only new messages.
    list.setAttribute('aria-busy', 'true');
    list.replaceChildren(...cache.messages.map((m) => this.renderMessage(m, m.room)));
    // An empty list says so only once the reader has caught up: until then it is loading.
    delete list.dataset.caughtUp;
    list.dataset.empty = all ? 'No messages in any room yet.' : 'No messages yet: say something below.';
    list.scrollTop = list.scrollHeight;
    follow({
      // A channel receives every message of the streams below it, each as an envelope that
      // names its stream: one stream, one offset, for every room, those opened later included.
      path: all ? 'rooms' : `rooms/${room}`,
      contentType: 'application/json',
      channel: all,
      offset: cache.offset,
      incarnation: cache.incarnation,
      onBatch: (batch) => {
        // Only the last 500 are kept and shown; a catch-up batch can hold many more (and more
        // than a spread into a call can take).
        const items = batch.items ?? [];
        // The channel announces each room opened after it (`created`): rooms opened by anyone
        // join this page's list.
        if (all) this.learn(items);
        const shown = all
          ? items
              .filter((e) => isObject(e?.data) && typeof e.stream === 'string')
              .map((e) => ({ ...e.data, room: e.stream.slice('rooms/'.length) }))
          : items;
        // A message sent again after its send failed, having landed (the connection dropped
        // before the answer), carries the same id: it shows once.
        const seen = new Set(cache.messages.map(messageKey));
        const fresh = shown
          .filter((m) => {
            if (!isMessage(m)) return false;
            const key = messageKey(m);
            if (key === undefined) return true;
            if (seen.has(key)) return false;
            seen.add(key);
            return true;
          })
          .slice(-500);
        // Followed down only by a reader at the bottom: one scrolled up to read stays there.
        const following = atBottom(list);
        for (const m of fresh) list.append(this.renderMessage(m, m.room));
        while (list.childElementCount > 500) list.firstElementChild.remove();
        cache.messages = cache.messages.concat(fresh).slice(-500);
        cache.offset = batch.offset;
        cache.incarnation = batch.incarnation;
        saved.set(`room:${room}`, cache);
        if (fresh.length && following) list.scrollTop = list.scrollHeight;
        if (batch.upToDate) {
          list.dataset.caughtUp = '';
          list.removeAttribute('aria-busy');
        }
      },
      onReset: () => {
        cache.offset = '-1';
        cache.incarnation = undefined;
        cache.messages = [];
        saved.remove(`room:${room}`);
        // Read again from the start: a backlog again.
        list.setAttribute('aria-busy', 'true');
        list.replaceChildren();
      },
    });
  },
  /** Adds rooms with valid names to the list (and to the saved list); whether any was new. */
  add(names) {
    const fresh = [...new Set(names)].filter((name) => ROOM_NAME.test(name) && !this.list.includes(name));
    if (!fresh.length) return false;
    // Other tabs of this browser may have added rooms since this one read the list: keep theirs.
    this.merge(saved.get('rooms', []));
    this.list.push(...fresh.filter((name) => !this.list.includes(name)));
    saved.set('rooms', this.list);
    return true;
  },
  /** Takes the rooms of a stored list (another tab's) that this one lacks; whether any was new. */
  merge(stored) {
    const more = Array.isArray(stored) ? stored.filter((name) => isRoomName(name) && !this.list.includes(name)) : [];
    this.list.push(...more);
    return more.length > 0;
  },
  /** Adds the rooms that `created` events of the channel name, as the room form would. */
  learn(items) {
    const named = items
      .filter((e) => e?.event === 'created' && typeof e.stream === 'string')
      .map((e) => e.stream.slice('rooms/'.length));
    if (this.add(named)) this.renderList();
  },
  init() {
    // A room another tab of this browser opened joins this tab's list.
    addEventListener('storage', (e) => {
      if (e.key === 'edgestream-demo:rooms' && this.merge(saved.get('rooms', []))) this.renderList();
    });
    $('who').value = saved.get('who', '');
    $('who').addEventListener('change', () => saved.set('who', $('who').value.trim()));
    // The browser refuses a name that does not match the input's pattern, and says why; this
    // says it too for what the pattern lets through (its title is ROOM_NAME_RULE).
    $('room-name').addEventListener('input', () => $('room-name').setCustomValidity(''));
    $('room-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const name = $('room-name').value.trim().toLowerCase();
      if (!ROOM_NAME.test(name)) {
        $('room-name').setCustomValidity(ROOM_NAME_RULE);
        $('room-name').reportValidity();
        return;
      }
      this.add([name]);
      $('room-name').value = '';
      this.open(name);
    });
    $('message-form').addEventListener('submit', async (e) => {
      e.preventDefault();
      const user = $('who').value.trim();
      const text = $('message').value.trim();
      if (!user || !text || this.current === ALL) return;
      saved.set('who', user);
      $('message').value = '';
      // Whoever sends follows the room again, down to their message.
      $('messages').scrollTop = $('messages').scrollHeight;
      const room = this.current;
      const again = unsent && unsent.room === room && unsent.user === user && unsent.text === text;
      const message = again ? unsent.message : { id: newId(), user, text, at: Date.now() };
      unsent = null;
      try {
        await post(`rooms/${room}`, message);
      } catch (err) {
        if (this.current !== room) {
          // The page shows another room now: the text back in the box would be sent there.
          alert(`Your message to #${room} was not sent (${failure(err)}): "${text}"`);
          return;
        }
        unsent = { room, user, text, message };
        $('message').value = text;
        alert(failure(err));
      }
    });
  },
};

// ---- Live table: a keyed table of State Protocol change messages ----

/** Whether an item's name input is valid and holds more than spaces; if not, the browser says why. */
function named(input) {
  input.setCustomValidity(input.value.trim() || !input.value ? '' : 'An item needs a name, not only spaces.');
  return input.reportValidity();
}

const inventory = {
  // State Protocol messages (`change.insert(...)`); the stream is new, so its readers never
  // meet the older demo's own event format.
  path: 'tables/items',
  live: null,
  /** Keeps the table's snapshot in localStorage: a reload reads only the changes since. */
  store: { load: () => saved.get('items', undefined), save: (snapshot) => saved.set('items', snapshot) },
  /** An insert is on its way: Insert waits for it (a second click would insert the row twice). */
  inserting: false,
  /** The insert that failed last (`{ name, qty, id, createdAt }`), which Insert sends again as it was. */
  unsent: null,
  /**
   * Shows the rows, updating those on screen in place (keyed by id), so that a row being edited
   * keeps what was typed in it and the focus while others change.
   */
  render(changed = new Set()) {
    // Anyone can append a change whose value is not a row (null, a string...): those are not shown.
    const rows = this.live ? [...this.live.entries('item')].filter(([, row]) => isObject(row)) : [];
    rows.sort(([a, x], [b, y]) => (time(x.createdAt) ?? 0) - (time(y.createdAt) ?? 0) || a.localeCompare(b));
    const tbody = $('rows');
    const ids = new Set(rows.map(([id]) => id));
    // Gone rows leave first: the others then keep their order, and moving none loses the focus.
    for (const tr of [...tbody.rows]) if (!ids.has(tr.dataset.id)) tr.remove();
    const onScreen = new Map([...tbody.rows].map((tr) => [tr.dataset.id, tr]));
    let next = tbody.firstElementChild;
    for (const [id, row] of rows) {
      const tr = onScreen.get(id) ?? this.newRow(id);
      this.fill(tr, row, changed.has(id));
      if (tr === next) next = next.nextElementSibling;
      else tbody.insertBefore(tr, next);
    }
  },
  /** A row's cells, with nothing in them yet (see `fill`). */
  newRow(id) {
    const tr = document.createElement('tr');
    tr.dataset.id = id;
    const cell = (content) => {
      const td = document.createElement('td');
      td.append(content);
      return td;
    };
    // The rules of the Insert form's fields (index.html), checked on Save.
    const name = document.createElement('input');
    name.dir = 'auto';
    name.required = true;
    name.maxLength = 40;
    name.setAttribute('aria-label', `Item ${id}`);
    const qty = document.createElement('input');
    qty.type = 'number';
    qty.min = '0';
    qty.required = true;
    qty.setAttribute('aria-label', `Quantity of ${id}`);
    // What the row holds now: a field whose input differs from it is being edited.
    name.dataset.stored = qty.dataset.stored = '';
    const save = document.createElement('button');
    save.type = 'button';
    save.className = 'quiet';
    save.textContent = 'Save';
    save.addEventListener('click', () => {
      if (!named(name) || !qty.reportValidity()) return;
      report(post(this.path, change.update('item', id, { ...tr.row, name: name.value.trim(), qty: Number(qty.value), updatedAt: Date.now() })));
    });
    const remove = document.createElement('button');
    remove.type = 'button';
    remove.className = 'danger';
    remove.textContent = 'Delete';
    remove.addEventListener('click', () => report(post(this.path, change.delete('item', id))));
    const actions = cell(save);
    actions.className = 'actions';
    actions.append(remove);
    tr.append(cell(id), cell(name), cell(qty), cell(''), actions);
    return tr;
  },
  /**
   * Shows `row` in `tr`. A field being edited keeps what was typed; when the row changed under
   * an edit, the row is marked (`stale`) until the edit is saved or undone.
   */
  fill(tr, row, flash) {
    // A row's fields are shown only when they have the type the demo writes.
    const rowName = typeof row.name === 'string' ? row.name : '';
    const rowQty = typeof row.qty === 'number' && Number.isFinite(row.qty) ? row.qty : 0;
    const updatedAt = time(row.updatedAt);
    const [name, qty] = tr.querySelectorAll('input');
    const [save, remove] = tr.querySelectorAll('button');
    tr.row = row;
    tr.dataset.name = rowName;
    let edited = false;
    let changedUnder = false;
    for (const [input, value] of [[name, rowName], [qty, String(rowQty)]]) {
      if (input.value === input.dataset.stored || input.value === value) {
        if (input.value !== value) input.value = value;
      } else {
        edited = true;
        changedUnder ||= input.dataset.stored !== value;
      }
      input.dataset.stored = value;
    }
    if (changedUnder) tr.classList.add('stale');
    else if (!edited) tr.classList.remove('stale');
    tr.title = tr.classList.contains('stale') ? 'Changed elsewhere while you edit it: Save writes yours' : '';
    tr.cells[3].textContent = updatedAt ? clock(updatedAt) : '';
    save.setAttribute('aria-label', `Save ${rowName || tr.dataset.id}`);
    remove.setAttribute('aria-label', `Delete ${rowName || tr.dataset.id}`);
    if (flash) {
      // Restarts the animation on a row that flashed before.
      tr.classList.remove('flash');
      void tr.offsetWidth;
      tr.classList.add('flash');
    }
  },
  open() {
    this.render();
    follow({
      path: this.path,
      contentType: 'application/json',
      // Anyone can append to the demo's stream: skip what is not a change message.
      open: (url, signal) => (this.live = table({ url, params, live: mode, signal, store: this.store, saveEveryMs: 0, onInvalid: 'skip' })),
      onBatch: ({ changes }) => this.render(new Set(changes.map((c) => c.key))),
      onReset: () => {
        // The saved snapshot is of a stream that is gone.
        saved.remove('items');
        this.live = null;
        this.render();
      },
    });
  },
  init() {
    const button = $('row-form').querySelector('button');
    // A name refused as only spaces (see `named`) is asked again once it changes: the form's own
    // check would otherwise keep refusing it.
    $('row-name').addEventListener('input', () => $('row-name').setCustomValidity(''));
    $('row-form').addEventListener('submit', async (e) => {
      e.preventDefault();
      const name = $('row-name').value.trim();
      if (!named($('row-name')) || this.inserting) return;
      this.inserting = true;
      button.disabled = true;
      const qty = Number($('row-qty').value);
      // An insert that failed may have landed, its answer lost: inserted again unchanged, it
      // keeps its id, so the row is written twice, not added twice.
      const again = this.unsent && this.unsent.name === name && this.unsent.qty === qty;
      const now = Date.now();
      const [id, createdAt] = again ? [this.unsent.id, this.unsent.createdAt] : [newId(), now];
      this.unsent = null;
      try {
        await post(this.path, change.insert('item', id, { name, qty, createdAt, updatedAt: now }));
        // Cleared unless something else was typed meanwhile.
        if ($('row-name').value.trim() === name) $('row-name').value = '';
      } catch (err) {
        this.unsent = { name, qty, id, createdAt };
        alert(failure(err));
      } finally {
        this.inserting = false;
        button.disabled = false;
      }
    });
  },
};

// ---- Tail: a text stream, followed like tail -f ----

/** How much of the tail is kept, on screen and in storage: its last characters. */
const TAIL_KEEP = 100_000;

const tail = {
  path: 'tail/demo',
  state: saved.get('tail', { offset: '-1', text: '' }),
  /** The tail's appender (see writer()). */
  producer: null,
  /**
   * Lines go through an idempotent producer: a line whose answer was lost (the connection
   * dropped after the server stored it) is sent again with the same sequence number, and the
   * server keeps it once (text lines carry no id to tell them apart by). A few retries, then
   * the Append fails and the line is given back; a failed producer is replaced by a new one.
   */
  writer() {
    this.producer ??= new IdempotentProducer(
      new DurableStream({
        url: `${API}/${this.path}`,
        params,
        headers: token && { authorization: `Bearer ${token}` },
        contentType: 'text/plain',
        retry: { maxRetries: 3 },
      }),
      `tail-${newId()}`,
      // One batch at a time: lines land in the order they were appended.
      { maxInFlight: 1 },
    );
    return this.producer;
  },
  open() {
    const pre = $('tail');
    pre.textContent = this.state.text;
    let shown = this.state.text.length;
    const decoder = new TextDecoder();
    follow({
      path: this.path,
      contentType: 'text/plain',
      offset: this.state.offset,
      incarnation: typeof this.state.incarnation === 'string' ? this.state.incarnation : undefined,
      onBatch: (batch) => {
        if (batch.bytes?.length) {
          const text = decoder.decode(batch.bytes, { stream: true });
          this.state.text = (this.state.text + text).slice(-TAIL_KEEP);
          // Appended while it fits; past that, the screen is trimmed to what is kept.
          shown += text.length;
          const following = atBottom(pre);
          if (shown > TAIL_KEEP) {
            pre.textContent = this.state.text;
            shown = this.state.text.length;
          } else {
            pre.append(text);
          }
          if (following) pre.scrollTop = pre.scrollHeight;
        }
        this.state.offset = batch.offset;
        this.state.incarnation = batch.incarnation;
        saved.set('tail', this.state);
      },
      onReset: () => {
        this.state = { offset: '-1', text: '' };
        saved.set('tail', this.state);
        pre.textContent = '';
        shown = 0;
      },
    });
  },
  init() {
    $('tail-form').addEventListener('submit', async (e) => {
      e.preventDefault();
      const line = $('line').value;
      if (!line) return;
      $('line').value = '';
      const producer = this.writer();
      try {
        producer.append(`${line}\n`);
        await producer.flush();
      } catch (err) {
        if (this.producer === producer) this.producer = null;
        $('line').value = line;
        alert(failure(err));
      }
    });
  },
};

// ---- tabs and mode ----

const views = { rooms: () => rooms.open(rooms.current), table: () => inventory.open(), tail: () => tail.open() };
let currentView = saved.get('view', 'rooms');

function show(view) {
  currentView = view;
  saved.set('view', view);
  for (const name of Object.keys(views)) {
    const tab = $(`tab-${name}`);
    const selected = name === view;
    tab.setAttribute('aria-selected', String(selected));
    tab.tabIndex = selected ? 0 : -1;
    $(`view-${name}`).hidden = !selected;
  }
  views[view]();
}

function restartView() {
  show(currentView);
}

const tabNames = Object.keys(views);
for (const name of tabNames) {
  const tab = $(`tab-${name}`);
  tab.addEventListener('click', () => show(name));
  tab.addEventListener('keydown', (e) => {
    const i = tabNames.indexOf(name);
    const next = e.key === 'ArrowRight' ? tabNames[(i + 1) % tabNames.length] : e.key === 'ArrowLeft' ? tabNames[(i + tabNames.length - 1) % tabNames.length] : null;
    if (next) {
      show(next);
      $(`tab-${next}`).focus();
    }
  });
}

$('mode').value = mode;
$('mode').addEventListener('change', () => {
  mode = $('mode').value;
  saved.set('mode', mode);
  restartView();
});

rooms.init();
inventory.init();
tail.init();
rooms.renderList();
show(tabNames.includes(currentView) ? currentView : 'rooms');
