// Command-line arguments: one command's options parsed strictly, numbers as typed in decimal, and the
// usage error every bad argument becomes (one line on stderr, exit code 2).
import { parseArgs, type ParseArgsConfig } from "node:util";
import { InputError } from "../engine/errors.ts";

/** A mistake in how the command was called: printed as one line, exit code 2. */
export class UsageError extends InputError {
  override name = "UsageError";
}

export type Options = NonNullable<ParseArgsConfig["options"]>;

/** An argument that starts like a negative number ("-2", "-.5", "-inf", "-nan"): a value, never an option. */
const NEGATIVE_NUMBER = /^-(\d|\.\d|inf|nan)/i;

/**
 * `--name -2` as `--name=-2` for the command's string options. node:util's parseArgs refuses a value that
 * starts with "-" as "ambiguous" (a message and the whole usage text), so the option's own check, the
 * same one-line error as for any other bad value, would never see it.
 */
function attachNegativeValues(args: readonly string[], options: Options): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === "--") {
      out.push(...args.slice(i));
      break;
    }
    const name = /^--([^=]+)$/.exec(a)?.[1];
    if (
      name !== undefined && Object.hasOwn(options, name) && options[name].type === "string" &&
      i + 1 < args.length && NEGATIVE_NUMBER.test(args[i + 1])
    ) {
      out.push(`${a}=${args[++i]}`);
    } else out.push(a);
  }
  return out;
}

/** Options that name a file, folder or revision: an empty value names nothing (and "" resolves to "."). */
const NAMING_OPTIONS = [
  "model",
  "out",
  "patch",
  "dir",
  "revision",
  "dataset",
  "hparams",
  "corpus",
  "stats",
  "npz",
  "facts",
  "subjects",
  "world",
  "snippets",
  "tfidf",
  "config",
  "tokenizer",
  "init",
  "apply",
  "revert",
];

/** A command's options (and positionals where it takes them); --help prints the usage and exits. */
export function parseCommand(
  args: string[],
  options: Options,
  usage: string,
  allowPositionals = false,
): { values: Record<string, unknown>; positionals: string[] } {
  try {
    const { values, positionals } = parseArgs({
      args: attachNegativeValues(args, options),
      options: { ...options, help: { type: "boolean", short: "h" } },
      strict: true,
      allowPositionals,
    });
    if (values.help) {
      console.log(usage);
      Deno.exit(0);
    }
    const given = values as Record<string, unknown>;
    for (const k of NAMING_OPTIONS) {
      if (given[k] === "") throw new UsageError(`--${k} must not be empty`);
    }
    return { values: given, positionals };
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError(`${(e as Error).message}\n\n${usage}`);
  }
}

export function parse(args: string[], options: Options, usage: string): Record<string, unknown> {
  return parseCommand(args, options, usage).values;
}

/** A number as typed in decimal: sign, digits, fraction, exponent; no spaces, hex, Infinity or empty text. */
const DECIMAL = /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i;

/** The number an option's text spells in decimal, NaN for anything else ("", "abc", "0x10", " 3"). */
export function decimalValue(raw: unknown): number {
  return typeof raw === "string" && DECIMAL.test(raw) ? Number(raw) : NaN;
}

/** Seeds feed 32-bit generators (`seed >>> 0`): a larger or negative seed would silently alias another. */
export const MAX_SEED = 2 ** 32 - 1;

/**
 * An integer option in [min, max], `fallback` when absent. Anything else is a usage error naming the valid
 * range: negative or non-integer numbers, "abc", "", "1e999" (never rounded or clamped into range).
 */
export function intOption(
  opts: Record<string, unknown>,
  name: string,
  fallback: number,
  min = 0,
  max = Number.MAX_SAFE_INTEGER,
): number {
  const raw = opts[name];
  if (raw === undefined) return fallback;
  const v = decimalValue(raw);
  if (!Number.isInteger(v) || v < min || v > max) {
    const range = max === Number.MAX_SAFE_INTEGER && !(Number.isFinite(v) && v > max)
      ? `≥ ${min}`
      : `from ${min} to ${max}`;
    throw new UsageError(`--${name} must be an integer ${range} (got '${raw}')`);
  }
  return v === 0 ? 0 : v; // not -0
}

export function requireText(opts: Record<string, unknown>, name: string): string {
  const v = opts[name];
  if (typeof v !== "string" || v.length === 0) throw new UsageError(`--${name} TEXT is required`);
  return v;
}

/** --model DIR, taken by every command that loads a model. */
export const MODEL_OPTION = { model: { type: "string" } } as const;
