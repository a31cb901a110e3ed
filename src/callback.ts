/** The optional trailing callback of express-session's Store methods. */
export type Callback<T = void> = (err?: any, value?: T) => void;

/**
 * Settles an express-session callback from a promise: called exactly once, on a later tick, outside
 * any try/catch (so a throwing callback surfaces as the app's own exception, is never called twice,
 * and is never swallowed). When a callback is given, errors go to it and the returned promise
 * resolves, so callback users never see an unhandled rejection.
 */
export function settle<T>(promise: Promise<T>, callback: Callback<T> | undefined): Promise<T> {
  if (typeof callback !== "function") return promise;
  return promise.then(
    (value) => {
      setImmediate(callback, null, value);
      return value;
    },
    (error) => {
      setImmediate(callback, error);
      return undefined as T;
    },
  );
}
