import { defineConfig } from 'vitest/config';

// `npm run test:slow`: long fault-injection suites, one file at a time.
export default defineConfig({
  test: {
    include: ['tests/slow/**/*.slow.ts'],
    fileParallelism: false,
    testTimeout: 600_000,
    hookTimeout: 120_000,
    reporters: ['default'],
  },
});
