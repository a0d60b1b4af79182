import { defineConfig } from 'vitest/config';

// End-to-end suites: each file starts its own server(s), so files run one at a time.
export default defineConfig({
  test: {
    include: ['tests/**/*.test.ts'],
    fileParallelism: false,
    testTimeout: 30_000,
    hookTimeout: 120_000,
    reporters: ['default'],
  },
});
