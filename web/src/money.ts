// Money as the contracts have it: integer minor units of one currency. Amounts are
// parsed and shown with bigint arithmetic only, so "0.29" is 29 cents, never 28.999….
import type { Money } from "./gen/shop/common/v1/money_pb";

// ISO 4217 minor units where they are not 2.
const NO_MINOR = new Set([
  "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI",
  "VND", "VUV", "XAF", "XOF", "XPF",
]);
const THREE_MINOR = new Set(["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"]);
const MAX_INT64 = 2n ** 63n - 1n;

export function minorDigits(currency: string): number {
  if (NO_MINOR.has(currency)) return 0;
  if (THREE_MINOR.has(currency)) return 3;
  return 2;
}

/** 1250n USD -> "12.50 USD". */
export function formatMinor(amountMinor: bigint, currency: string): string {
  const digits = minorDigits(currency);
  const negative = amountMinor < 0n;
  const magnitude = negative ? -amountMinor : amountMinor;
  const scale = 10n ** BigInt(digits);
  const whole = (magnitude / scale).toString();
  const fraction = digits ? "." + (magnitude % scale).toString().padStart(digits, "0") : "";
  return `${negative ? "-" : ""}${whole}${fraction} ${currency}`;
}

export function formatMoney(money: Money | undefined): string {
  return money ? formatMinor(money.amountMinor, money.currencyCode) : "";
}

export type Parsed = { ok: true; amountMinor: bigint } | { ok: false; error: string };

/** "12.50" USD -> 1250n: the decimal text is split at the point and joined as digits,
 * no float in between. More decimals than the currency has is an error, not rounded. */
export function parseMajor(text: string, currency: string): Parsed {
  const digits = minorDigits(currency);
  const match = /^(\d+)(?:\.(\d*))?$/.exec(text.trim());
  const example = digits ? `12.${"5".padEnd(digits, "0")}` : "1250";
  if (!match) return { ok: false, error: `Enter an amount such as ${example}.` };
  const fraction = match[2] ?? "";
  if (fraction.length > digits) {
    const allowed = digits ? `at most ${digits} decimals` : "no decimals";
    return { ok: false, error: `${currency || "This currency"} takes ${allowed}.` };
  }
  const amountMinor =
    BigInt(match[1]) * 10n ** BigInt(digits) + BigInt(fraction.padEnd(digits, "0") || "0");
  if (amountMinor > MAX_INT64) return { ok: false, error: "That amount is too large." };
  return { ok: true, amountMinor };
}
