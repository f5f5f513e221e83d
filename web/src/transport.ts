// The one way the console reaches the mesh: the Connect protocol (JSON) on the page's
// own origin, so the gateway's CSP (connect-src 'self') and no CORS apply.
import type { Interceptor, Transport } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";

export function gatewayTransport(interceptors: Interceptor[] = []): Transport {
  return createConnectTransport({ baseUrl: window.location.origin, interceptors });
}
