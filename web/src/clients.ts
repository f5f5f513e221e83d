// The services the console calls, through one transport whose interceptor signs every
// call in: `Authorization: Bearer`, renewed silently before expiry and once more when a
// call is refused as UNAUTHENTICATED (then the call is retried once).
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { NotificationService } from "./gen/shop/notification/v1/notification_pb";
import { OrderService } from "./gen/shop/order/v1/order_pb";
import { ProductService } from "./gen/shop/product/v1/product_pb";
import { accessToken, renew } from "./session";
import { gatewayTransport } from "./transport";

const AUTHORIZATION = "Authorization";

const bearer: Interceptor = (next) => async (request) => {
  const token = await accessToken();
  if (token) request.header.set(AUTHORIZATION, `Bearer ${token}`);
  try {
    return await next(request);
  } catch (error) {
    // A stream's request cannot be sent twice: the stream's owner reconnects instead.
    if (request.stream || !token || ConnectError.from(error).code !== Code.Unauthenticated) {
      throw error;
    }
    const renewed = await renew(token);
    // Renewal refused: the session has ended; a public call still works without a token.
    if (renewed) request.header.set(AUTHORIZATION, `Bearer ${renewed}`);
    else request.header.delete(AUTHORIZATION);
    return await next(request);
  }
};

const transport = gatewayTransport([bearer]);

export const products = createClient(ProductService, transport);
export const orders = createClient(OrderService, transport);
export const notifications = createClient(NotificationService, transport);
