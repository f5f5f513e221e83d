// Whole numbers typed as text (quantities, stock).

/** "12" -> 12; anything but digits (or a number too large to be exact) -> null. */
export function wholeNumber(text: string): number | null {
  const trimmed = text.trim();
  if (!/^\d{1,9}$/.test(trimmed)) return null;
  return Number(trimmed);
}
