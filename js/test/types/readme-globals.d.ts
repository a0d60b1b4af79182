// What the README's examples (js/README.md) take from their surroundings: the app's own
// functions, and names an earlier example defined. ../types.test.mjs compiles each example
// against these and the package's types.
declare const url: string;
declare const base: string;
declare const log: import('edgestream').DurableStream;
declare const DurableStream: typeof import('edgestream').DurableStream;
declare const IdempotentProducer: typeof import('edgestream').IdempotentProducer;
declare function getToken(): Promise<string>;
declare function render(message: unknown): void;
declare function hideSpinner(): void;
declare function clearList(): void;
declare function removeRow(key: string): void;
declare function showRow(key: string, value: unknown): void;
