/**
 * "Firefox on Linux" from a user agent: the browser family and the operating system, which stay the same
 * across the browser's updates. Used for {@link SessionRecord}'s `device`, the lifecycle events, and the
 * `newDevice` check (a device is its family and its IP). A rough guess, good enough to show a person
 * their devices; `null` without a user agent, and the user agent's first 40 characters when neither
 * part is recognised.
 */
export function describeDevice(userAgent: string | null | undefined): string | null {
  if (!userAgent) return null;
  const ua = userAgent;
  const browser = /\bEdg(?:e|A|iOS)?\//.test(ua)
    ? "Edge"
    : /\b(?:OPR|Opera)\//.test(ua)
      ? "Opera"
      : /\b(?:Firefox|FxiOS)\//.test(ua)
        ? "Firefox"
        : /\bHeadlessChrome\//.test(ua)
          ? "Headless Chrome"
          : /\b(?:Chrome|CriOS)\//.test(ua)
            ? "Chrome"
            : /\bVersion\/[\d.]+.*\bSafari\//.test(ua)
              ? "Safari"
              : /^curl\//.test(ua)
                ? "curl"
                : /^node\b|undici/i.test(ua)
                  ? "Node.js"
                  : /^python-requests\//.test(ua)
                    ? "Python requests"
                    : null;
  const os = /\b(?:iPhone|iPad|iPod)\b/.test(ua)
    ? "iOS"
    : /\bAndroid\b/.test(ua)
      ? "Android"
      : /\bWindows\b/.test(ua)
        ? "Windows"
        : /\bCrOS\b/.test(ua)
          ? "ChromeOS"
          : /\bMac OS X\b|\bMacintosh\b/.test(ua)
            ? "macOS"
            : /\bLinux\b/.test(ua)
              ? "Linux"
              : null;
  if (browser && os) return `${browser} on ${os}`;
  return browser ?? os ?? ua.slice(0, 40);
}
