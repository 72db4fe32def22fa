// The one root of input errors: a file, option, dataset or request that cannot be used as given. Every module
// that rejects what a user handed it throws a subclass, so the CLI maps them to one line and exit code 2 in one
// place, and the page shows their message as it is. Everything else (a lost device, a bug) is not an InputError.
// A leaf module: no imports, no Deno APIs.

/** Bad input from the user (a file, an option, a record, a request): shown as its message alone. */
export class InputError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}
