/** The optional trailing callback of express-session's Store methods. */
export type Callback<T = void> = (err?: any, value?: T) => void;

/**
 * Answers an express-session callback from a promise: called exactly once, asynchronously, in a
 * microtask of its own outside any try/catch and outside the promise chain (so a throwing callback
 * surfaces as the app's own uncaught exception, is never called twice, and is never swallowed). When a
 * callback is given, errors go to it and the returned promise resolves, so callback users never see an
 * unhandled rejection.
 */
export function answer<T>(promise: Promise<T>, callback: Callback<T> | undefined): Promise<T> {
  if (typeof callback !== "function") return promise;
  return promise.then(
    (value) => {
      queueMicrotask(() => callback(null, value));
      return value;
    },
    (error) => {
      queueMicrotask(() => callback(error));
      return undefined as T;
    },
  );
}

/**
 * {@link answer} for a value known now (a cache hit, a skipped write): the same once-only, later-tick
 * callback, without the promise chain of an operation.
 */
export function answerNow<T>(value: T, callback: Callback<T> | undefined): Promise<T> {
  if (typeof callback === "function") queueMicrotask(() => callback(null, value));
  return Promise.resolve(value);
}
