// A failed call as the pages show it: the Connect error's message and its google.rpc
// details (BadRequest field violations, ErrorInfo reason and metadata, RetryInfo), which
// the gateway passes through unchanged from the services.
import { Code, ConnectError } from "@connectrpc/connect";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  RetryInfoSchema,
} from "./gen/google/rpc/error_details_pb";

export interface Problem {
  code: Code;
  message: string;
  reason: string;
  metadata: Record<string, string>;
  // Field path (as the services name it: "display_name", "items[0].quantity") -> what is wrong.
  fields: Record<string, string>;
  retryAfterSeconds: number | null;
}

export function problemOf(error: unknown): Problem {
  const failure = ConnectError.from(error);
  const fields: Record<string, string> = {};
  for (const badRequest of failure.findDetails(BadRequestSchema)) {
    for (const violation of badRequest.fieldViolations) {
      const known = fields[violation.field];
      fields[violation.field] = known ? `${known}; ${violation.description}` : violation.description;
    }
  }
  const info = failure.findDetails(ErrorInfoSchema)[0];
  const retry = failure.findDetails(RetryInfoSchema)[0]?.retryDelay;
  return {
    code: failure.code,
    message: failure.rawMessage,
    reason: info?.reason ?? "",
    metadata: info?.metadata ?? {},
    fields,
    retryAfterSeconds: retry ? Math.max(1, Math.ceil(Number(retry.seconds) + retry.nanos / 1e9)) : null,
  };
}

/** The call may have taken effect or may not (the answer was lost, the gateway is
 * away): a retry must be the same attempt (same idempotency key). */
export function isTransient(problem: Problem): boolean {
  return [
    Code.Unavailable,
    Code.DeadlineExceeded,
    Code.Unknown,
    Code.Internal,
    Code.Aborted,
    Code.Canceled,
    Code.ResourceExhausted,
  ].includes(problem.code);
}

/** The description of the first of `paths` that has a violation ("" when none). */
export function fieldError(problem: Problem | null, ...paths: string[]): string {
  if (!problem) return "";
  for (const path of paths) {
    if (problem.fields[path]) return problem.fields[path];
  }
  return "";
}

/** A sentence for people; `nameOf` turns ids in the metadata into names. */
export function readable(problem: Problem, nameOf: (id: string) => string = (id) => id): string {
  const ids = (key: string) =>
    (problem.metadata[key] ?? "").split(",").filter(Boolean).map(nameOf).join(", ");
  switch (problem.reason) {
    case "INSUFFICIENT_STOCK":
      return `Out of stock: there is not enough stock of ${ids("product_ids") || "an item"}.`;
    case "PAYMENT_DECLINED":
      return `Payment declined: ${problem.message}`;
    case "INVALID_CREDENTIALS":
      return "Wrong email or password.";
    case "EMAIL_TAKEN":
      return "That email is already taken: sign in, or use another email.";
    case "TOO_MANY_ATTEMPTS":
    case "RATE_LIMITED":
      return `Too many attempts: try again in ${problem.retryAfterSeconds ?? "a few"} seconds.`;
    case "PRODUCT_NOT_FOUND":
      return `Not in the catalogue: ${ids("ids") || problem.message}.`;
    case "USER_INACTIVE":
      return "This account is not active.";
  }
  switch (problem.code) {
    case Code.InvalidArgument:
      return Object.keys(problem.fields).length
        ? "Some fields need correcting."
        : problem.message || "The request is not valid.";
    case Code.Unauthenticated:
      return "You are not signed in, or your session has ended: sign in again.";
    case Code.PermissionDenied:
      return "You are not allowed to do that.";
    case Code.Unavailable:
    case Code.DeadlineExceeded:
    case Code.Unknown:
      return "The shop cannot be reached right now: try again in a moment.";
  }
  return problem.message || "Something went wrong.";
}
