// The live notifications of the signed-in user, from NotificationService's server
// stream. The stream is followed for as long as the user is signed in: when it drops
// (network, gateway restart, token expiry) it is opened again after a growing pause,
// from the cursor of the last message received, so nothing is missed; a notification
// whose id was already shown is skipped, so nothing is shown twice.
import { Code, ConnectError } from "@connectrpc/connect";
import { reactive } from "vue";
import { notifications } from "./clients";
import type { Notification } from "./gen/shop/notification/v1/notification_pb";
import { accessToken, renew } from "./session";

const FIRST_PAUSE_MS = 500;
// The service sends a heartbeat after 15 s without a message.
const SILENT_LIMIT_MS = 40_000;
const MAX_PAUSE_MS = 5_000;
// A stream that stayed open this long was healthy: the next pause starts short again.
const HEALTHY_MS = 10_000;

export type Connection = "connecting" | "live" | "reconnecting";

export const feed = reactive({
  // Newest first.
  items: [] as Notification[],
  connection: "connecting" as Connection,
});

let stopCurrent: (() => void) | null = null;

export function follow(userId: string): void {
  stopFollowing();
  const controller = new AbortController();
  stopCurrent = () => controller.abort();
  void run(userId, controller.signal);
}

export function stopFollowing(): void {
  stopCurrent?.();
  stopCurrent = null;
  feed.items = [];
  feed.connection = "connecting";
}

async function run(userId: string, signal: AbortSignal): Promise<void> {
  let cursor = "";
  const seen = new Set<string>();
  let pause = FIRST_PAUSE_MS;
  while (!signal.aborted) {
    const opened = Date.now();
    const token = await accessToken();
    const live = () => void (signal.aborted || (feed.connection = "live"));
    // A stream silent for longer than two heartbeats is dead (a half-open connection
    // after a laptop slept, say): given up and opened again.
    const attempt = new AbortController();
    const giveUp = () => attempt.abort();
    signal.addEventListener("abort", giveUp, { once: true });
    let watchdog = setTimeout(giveUp, SILENT_LIMIT_MS);
    try {
      // Heartbeats: the service says at once that the stream is open (a stream's
      // headers only come with its first message), then again after each quiet spell,
      // which also keeps idle proxies from closing it.
      const stream = notifications.streamNotifications(
        { userId, cursor, heartbeats: true },
        { signal: attempt.signal, onHeader: live },
      );
      for await (const message of stream) {
        if (signal.aborted) return;
        clearTimeout(watchdog);
        watchdog = setTimeout(giveUp, SILENT_LIMIT_MS);
        live();
        cursor = message.cursor || cursor;
        pause = FIRST_PAUSE_MS;
        const notification = message.notification;
        if (notification && !seen.has(notification.id)) {
          seen.add(notification.id);
          feed.items.unshift(notification);
        }
      }
    } catch (error) {
      if (signal.aborted) return;
      const code = ConnectError.from(error).code;
      // Expired: renew (once for all callers). Refused, the session ends and the app
      // stops following.
      if (code === Code.Unauthenticated) await renew(token ?? undefined);
    } finally {
      clearTimeout(watchdog);
      signal.removeEventListener("abort", giveUp);
    }
    if (signal.aborted) return;
    feed.connection = "reconnecting";
    if (Date.now() - opened > HEALTHY_MS) pause = FIRST_PAUSE_MS;
    await sleep(pause * (0.8 + Math.random() * 0.4), signal);
    pause = Math.min(pause * 2, MAX_PAUSE_MS);
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener(
      "abort",
      () => {
        clearTimeout(timer);
        resolve();
      },
      { once: true },
    );
  });
}
