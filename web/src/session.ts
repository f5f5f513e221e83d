// The signed-in user and their tokens: sign up, sign in, silent renewal, sign out.
//
// Where the tokens live, and why:
// - The access token only in this module's memory: it is the credential every call
//   carries, it lives 15 minutes at most, and a reload renews it from the refresh
//   token, so it never needs to be written anywhere a later visitor could read it.
// - The refresh token in sessionStorage: the tab's sign-in survives a reload and ends
//   with the tab. Not localStorage: refresh tokens rotate and a reused one revokes the
//   whole sign-in, so tabs sharing one would sign each other out at their first renewal.
//   Not a cookie: the API takes the refresh token in the request body. Storage is
//   readable by any script of this origin, which is why the gateway's CSP lets only the
//   console's own files run (no inline script, no other origin).
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { reactive } from "vue";
import { rolesOf } from "./claims";
import { AuthService, type Tokens } from "./gen/shop/user/v1/auth_pb";
import { UserService } from "./gen/shop/user/v1/user_pb";
import { gatewayTransport } from "./transport";

const STORAGE_KEY = "shop.session";
// Renew this many seconds before the access token expires (a fifth of its life if shorter).
const RENEW_BEFORE_S = 60;
// A token this close to its expiry is renewed before a call rather than sent.
const MIN_LIFE_MS = 10_000;
// After a renewal that failed without a refusal (the gateway is away), try again after this.
const RETRY_RENEW_MS = 5_000;
export const SESSION_ENDED = "Your session has ended: sign in again.";

interface Identity {
  userId: string;
  displayName: string;
  email: string;
}

interface Stored extends Identity {
  refreshToken: string;
}

export interface Session extends Identity {
  roles: string[];
  // Why the last session ended without the user signing out ("" otherwise).
  endedReason: string;
  // A kept sign-in is being resumed (its roles are not known yet).
  restoring: boolean;
}

export const session = reactive<Session>({
  userId: "",
  displayName: "",
  email: "",
  roles: [],
  endedReason: "",
  restoring: false,
});

// Plain clients: sign-in calls carry no bearer token (an expired one would be refused).
const auth = createClient(AuthService, gatewayTransport());
const users = createClient(UserService, gatewayTransport());

let access: { token: string; expiresAt: number } | null = null;
let renewTimer: ReturnType<typeof setTimeout> | undefined;
let renewing: Promise<string | null> | null = null;
// Bumped by every sign-in and sign-out, so a renewal that finishes later is dropped.
let epoch = 0;

function load(): Stored | null {
  try {
    const stored = JSON.parse(sessionStorage.getItem(STORAGE_KEY) ?? "null") as Stored | null;
    return stored && typeof stored.refreshToken === "string" && stored.userId ? stored : null;
  } catch {
    return null;
  }
}

function identityOf(stored: Stored): Identity {
  return { userId: stored.userId, displayName: stored.displayName, email: stored.email };
}

function adopt(tokens: Tokens, identity: Identity): void {
  access = { token: tokens.accessToken, expiresAt: Date.now() + tokens.expiresIn * 1000 };
  const stored: Stored = { ...identity, refreshToken: tokens.refreshToken };
  sessionStorage.setItem(STORAGE_KEY, JSON.stringify(stored));
  Object.assign(session, identity, { roles: rolesOf(tokens.accessToken), endedReason: "" });
  const lead = Math.min(RENEW_BEFORE_S, tokens.expiresIn / 5);
  scheduleRenewal((tokens.expiresIn - lead) * 1000);
}

function scheduleRenewal(afterMs: number): void {
  clearTimeout(renewTimer);
  renewTimer = setTimeout(() => void renew(), Math.max(0, afterMs));
}

function end(reason: string): void {
  epoch += 1;
  clearTimeout(renewTimer);
  access = null;
  sessionStorage.removeItem(STORAGE_KEY);
  Object.assign(session, { userId: "", displayName: "", email: "", roles: [], endedReason: reason });
}

function tokensOf(tokens: Tokens | undefined): Tokens {
  if (!tokens) throw new ConnectError("the answer carried no tokens", Code.Internal);
  return tokens;
}

export function isAdmin(): boolean {
  return session.roles.includes("admin");
}

export async function signUp(email: string, displayName: string, password: string): Promise<void> {
  const answer = await auth.signUp({ email, displayName, password });
  const user = answer.user;
  if (!user) throw new ConnectError("the answer carried no user", Code.Internal);
  epoch += 1;
  adopt(tokensOf(answer.tokens), {
    userId: user.id,
    displayName: user.displayName,
    email: user.email,
  });
}

export async function signIn(email: string, password: string): Promise<void> {
  const answer = await auth.signIn({ email, password });
  const tokens = tokensOf(answer.tokens);
  // SignIn names only the user id; the header shows the name, so ask for it.
  let displayName = email;
  try {
    const headers = { Authorization: `Bearer ${tokens.accessToken}` };
    const { user } = await users.getUser({ id: answer.userId }, { headers });
    displayName = user?.displayName || email;
  } catch {
    // The name is for display only: the email will do.
  }
  epoch += 1;
  adopt(tokens, { userId: answer.userId, displayName, email });
}

export async function signOut(): Promise<void> {
  const stored = load();
  end("");
  if (stored) {
    // Ends the sign-in on the server too; signed out here whatever it answers.
    await auth.signOut({ refreshToken: stored.refreshToken }).catch(() => undefined);
  }
}

/** The access token to send: renewed first when it is about to expire; null when
 * signed out, or when it cannot be had right now (the gateway is away). */
export async function accessToken(): Promise<string | null> {
  if (access && access.expiresAt - Date.now() > MIN_LIFE_MS) return access.token;
  if (!load()) return null;
  return renew();
}

/** Exchanges the refresh token for a new pair, one exchange at a time (a refresh token
 * works once). `refused`: the token a call was just refused with; when another call has
 * renewed it meanwhile, the new one is returned without another exchange. */
export function renew(refused?: string): Promise<string | null> {
  if (refused && access && access.token !== refused) return Promise.resolve(access.token);
  renewing ??= exchange().finally(() => {
    renewing = null;
  });
  return renewing;
}

async function exchange(): Promise<string | null> {
  const stored = load();
  if (!stored) return null;
  const started = epoch;
  try {
    const { tokens } = await auth.refresh({ refreshToken: stored.refreshToken });
    if (epoch !== started) return null; // signed out (or in again) meanwhile
    adopt(tokensOf(tokens), identityOf(stored));
    return access?.token ?? null;
  } catch (error) {
    if (epoch !== started) return null;
    if (isRefusal(error)) {
      end(SESSION_ENDED);
    } else {
      scheduleRenewal(RETRY_RENEW_MS); // unreachable or busy: the session stays
    }
    return null;
  }
}

/** The server looked at the refresh token and said no (used, revoked, expired). */
function isRefusal(error: unknown): boolean {
  const code = ConnectError.from(error).code;
  return [
    Code.Unauthenticated,
    Code.PermissionDenied,
    Code.InvalidArgument,
    Code.NotFound,
    Code.FailedPrecondition,
  ].includes(code);
}

/** At start: a sign-in this tab kept (a reload) is resumed with a fresh access token. */
export function restore(): void {
  const stored = load();
  if (!stored) return;
  Object.assign(session, identityOf(stored), { roles: [], endedReason: "", restoring: true });
  void renew().finally(() => {
    session.restoring = false;
  });
}
