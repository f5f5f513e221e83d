// An external Node app: a fresh npm project with only the @shop-mesh/client tarball and
// @connectrpc/connect-node installed calls the gateway over Connect (JSON on HTTP/1.1,
// binary on HTTP/2), gRPC-Web and gRPC. Compiled with tsc (strict) before it runs, so
// the package's types are checked as an app would use them.
//
//     node client_program.mjs http://127.0.0.1:<port>     (the token in SHOP_TOKEN)
//
// Prints one `ok ...` line per transport; exits non-zero on the first mismatch.
import { Code, ConnectError, createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";
import { BadRequestSchema } from "@shop-mesh/client/google/rpc/error_details_pb";
import type { Money } from "@shop-mesh/client/shop/common/v1/money_pb";
import { ProductService, type Product } from "@shop-mesh/client/shop/product/v1/product_pb";

const baseUrl = process.argv[2];
const token = process.env.SHOP_TOKEN ?? "";

const bearer: Interceptor = (next) => (request) => {
  request.header.set("authorization", `Bearer ${token}`);
  return next(request);
};

function expect(condition: boolean, what: string): asserts condition {
  if (!condition) throw new Error(what);
}

function sameMoney(a: Money | undefined, b: Money | undefined): boolean {
  return a?.currencyCode === b?.currencyCode && a?.amountMinor === b?.amountMinor;
}

async function check(label: string, transport: Transport): Promise<void> {
  const products = createClient(ProductService, transport);
  const name = `Node ${label} ${Math.random().toString(36).slice(2, 8)}`;
  const created: Product | undefined = (
    await products.createProduct({ name, price: { currencyCode: "EUR", amountMinor: 1299n }, stock: 4 })
  ).product;
  expect(created !== undefined && created.id.startsWith("prd_"), `${label}: created ${created?.id}`);
  const fetched = (await products.getProduct({ id: created.id })).product;
  expect(fetched !== undefined && fetched.id === created.id, `${label}: read back ${fetched?.id}`);
  expect(fetched.name === name, `${label}: name ${fetched.name} != ${name}`);
  expect(sameMoney(fetched.price, created.price), `${label}: price ${fetched.price?.amountMinor}`);
  expect(fetched.price?.amountMinor === 1299n && fetched.stock === 4, `${label}: ${fetched.stock}`);

  try {
    await products.createProduct({ name: "", price: { currencyCode: "EUR", amountMinor: 5n } });
  } catch (caught) {
    const error = ConnectError.from(caught);
    expect(error.code === Code.InvalidArgument, `${label}: code ${Code[error.code]}`);
    const fields = error.findDetails(BadRequestSchema).flatMap((d) => d.fieldViolations.map((v) => v.field));
    expect(fields.includes("name"), `${label}: violations ${JSON.stringify(fields)}`);
    console.log(`ok ${label}`);
    return;
  }
  throw new Error(`${label}: an empty name was accepted`);
}

const interceptors = [bearer];
try {
  await check("connect json http/1.1", createConnectTransport({ baseUrl, httpVersion: "1.1", interceptors }));
  await check(
    "connect binary http/2",
    createConnectTransport({ baseUrl, httpVersion: "2", useBinaryFormat: true, interceptors }),
  );
  await check("grpc-web", createGrpcWebTransport({ baseUrl, httpVersion: "1.1", interceptors }));
  await check("grpc", createGrpcTransport({ baseUrl, interceptors }));
} catch (error) {
  console.error(error);
  process.exitCode = 1;
}
// HTTP/2 sessions stay open for reuse: end here rather than wait for them to idle out.
process.exit();
