// Short content hashes that name things (statistics corpora, eval runs, patches): the first 16 hex digits of
// a SHA-256. Web Crypto, so the same in Deno and in a browser. A leaf module.

/** First 16 hex digits of the SHA-256 of bytes or text. */
export async function sha16(data: Uint8Array | string): Promise<string> {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : new Uint8Array(data);
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest.subarray(0, 8), (b) => b.toString(16).padStart(2, "0")).join("");
}
