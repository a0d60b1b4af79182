// What both demo suites share: a server and a Chromium for the file, and the page actions of
// the Rooms view.
import { afterAll, beforeAll, expect } from 'vitest';
import { chromium, type Browser, type Page } from 'playwright-core';
import { startServer } from '../../scripts/dev-server.mjs';

export type Server = Awaited<ReturnType<typeof startServer>>;

/** Starts a server and a browser before the file's tests, and stops both after them. */
export function useDemo(): { server: () => Server; browser: () => Browser } {
  let server: Server | undefined;
  let browser: Browser | undefined;
  beforeAll(async () => {
    server = await startServer({ vars: { LONG_POLL_TIMEOUT_MS: '2000' } });
    browser = await chromium.launch({
      executablePath: '/usr/bin/chromium',
      args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
    });
  });
  afterAll(async () => {
    await browser?.close();
    await server?.stop();
  });
  return { server: () => server!, browser: () => browser! };
}

export async function openRoom(page: Page, room: string) {
  await page.fill('#room-name', room);
  await page.click('#room-form button');
  await expect.poll(() => page.locator('#room-title').textContent()).toBe(`#${room}`);
  await expect.poll(() => page.locator('#state').textContent(), { timeout: 10_000 }).toBe('live');
}

export async function send(page: Page, who: string, text: string) {
  await page.fill('#who', who);
  await page.fill('#message', text);
  await page.click('#message-form button');
}

export const messages = (page: Page) => page.locator('#messages li .text').allTextContents();
