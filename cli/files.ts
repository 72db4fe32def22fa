// Reading the files a command is given (a missing one is the caller's mistake, exit code 2; any other
// failure to read it is not).
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
