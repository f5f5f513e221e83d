// The cart: kept in localStorage, so it survives reloads and is shared by the tabs of
// this browser. It also keeps the idempotency key of the checkout attempt in progress:
// a retry of the same cart (a lost answer, a reload, a second click) sends the same key
// and the order service places one order; any change to the cart is a new attempt.
import { reactive, watch } from "vue";
import type { Product } from "./gen/shop/product/v1/product_pb";
import { newKey } from "./keys";

export interface CartLine {
  productId: string;
  name: string;
  quantity: number;
  currency: string;
  // The unit price when added, as a decimal string of minor units (JSON has no bigint).
  unitMinor: string;
}

interface CartData {
  lines: CartLine[];
  checkoutKey: string;
}

const STORAGE_KEY = "shop.cart";

function load(): CartData {
  try {
    const data = JSON.parse(localStorage.getItem(STORAGE_KEY) ?? "null") as CartData | null;
    if (data && Array.isArray(data.lines)) {
      return { lines: data.lines, checkoutKey: String(data.checkoutKey ?? "") };
    }
  } catch {
    // A damaged cart is an empty one.
  }
  return { lines: [], checkoutKey: "" };
}

export const cart = reactive<CartData>(load());

watch(cart, () => localStorage.setItem(STORAGE_KEY, JSON.stringify(cart)), { deep: true });
// Another tab changed the cart.
window.addEventListener("storage", (event) => {
  if (event.key === STORAGE_KEY) Object.assign(cart, load());
});

function changed(): void {
  cart.checkoutKey = "";
}

export function addToCart(product: Product, quantity: number): void {
  const line = cart.lines.find((l) => l.productId === product.id);
  if (line) {
    line.quantity += quantity;
  } else {
    cart.lines.push({
      productId: product.id,
      name: product.name,
      quantity,
      currency: product.price?.currencyCode ?? "",
      unitMinor: (product.price?.amountMinor ?? 0n).toString(),
    });
  }
  changed();
}

export function setQuantity(productId: string, quantity: number): void {
  const line = cart.lines.find((l) => l.productId === productId);
  if (line && line.quantity !== quantity) {
    line.quantity = quantity;
    changed();
  }
}

export function removeLine(productId: string): void {
  cart.lines = cart.lines.filter((l) => l.productId !== productId);
  changed();
}

export function clearCart(): void {
  cart.lines = [];
  changed();
}

/** The key of this checkout attempt, made at its first try and kept for its retries. */
export function attemptKey(): string {
  cart.checkoutKey ||= newKey();
  return cart.checkoutKey;
}

/** The attempt was answered for good (refused, not lost): the next try is a new one. */
export function endAttempt(): void {
  changed();
}
