// Reading the files a command is given (a missing one is the caller's mistake, exit code 2; any other
// failure to read it is not) and the short content hash that identifies one.
import { UsageError } from "./args.ts";

export function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

export async function readBytes(path: string, what: string): Promise<Uint8Array> {
  try {
    return await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new UsageError(`${what} '${path}' not found`);
    throw new Error(`${what} '${path}': ${(e as Error).message}`);
  }
}

export async function readJsonFile(path: string, what: string): Promise<unknown> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new UsageError(`${what} '${path}' not found`);
    throw new Error(`${what} '${path}': ${(e as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new UsageError(`${what} '${path}': invalid JSON (${(e as Error).message})`);
  }
}

/** First 16 hex digits of the SHA-256 of bytes or text. */
export async function sha16(data: Uint8Array | string): Promise<string> {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : new Uint8Array(data);
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest.subarray(0, 8), (b) => b.toString(16).padStart(2, "0")).join("");
}
