// Routes in the URL's fragment (#/cart): the gateway serves one page at `/`, and a
// console route can never be mistaken for an API path. Small enough to need no router
// package.
import { ref } from "vue";

export type Route =
  | { name: "catalogue" }
  | { name: "product"; id: string }
  | { name: "cart" }
  | { name: "orders" }
  | { name: "signin" }
  | { name: "signup" }
  | { name: "admin" }
  | { name: "missing"; path: string };

const FIXED: Record<string, Route> = {
  "/": { name: "catalogue" },
  "/cart": { name: "cart" },
  "/orders": { name: "orders" },
  "/signin": { name: "signin" },
  "/signup": { name: "signup" },
  "/admin": { name: "admin" },
};

export function parse(hash: string): Route {
  const path = hash.replace(/^#/, "") || "/";
  const fixed = FIXED[path];
  if (fixed) return fixed;
  const product = /^\/products\/([^/]+)$/.exec(path);
  if (product) return { name: "product", id: decodeURIComponent(product[1]) };
  return { name: "missing", path };
}

export const route = ref<Route>(parse(window.location.hash));

window.addEventListener("hashchange", () => {
  route.value = parse(window.location.hash);
});

export function go(path: string): void {
  window.location.hash = path;
}
