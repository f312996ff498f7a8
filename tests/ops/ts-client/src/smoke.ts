// Herald through a client generated from openapi.yaml (openapi-typescript + openapi-fetch):
// send a notification, poll it until it is final, read its attempts, meet two errors, and
// send and read with `wait`.
// tests/ops/test_clients.py compiles this with `tsc` (strict) and runs it against a live
// `herald serve`; it prints one JSON line that the test checks.
import createClient from "openapi-fetch";
import type { components, paths } from "../generated/herald.js";

type Notification = components["schemas"]["NotificationDetail"];
type Attempt = components["schemas"]["AttemptOut"];
type Problem = components["schemas"]["Problem"];

declare const process: { env: Record<string, string | undefined> };

const baseUrl = process.env.HERALD_URL;
const apiKey = process.env.HERALD_API_KEY;
if (!baseUrl || !apiKey) {
  throw new Error("set HERALD_URL and HERALD_API_KEY");
}
const herald = createClient<paths>({ baseUrl, headers: { Authorization: `Bearer ${apiKey}` } });

const FINAL: ReadonlySet<Notification["status"]> = new Set([
  "delivered",
  "failed",
  "partial",
  "expired",
  "cancelled",
]);

function fail(what: string, problem: Problem): never {
  throw new Error(`${what}: ${problem.status} ${problem.title}: ${problem.detail}`);
}

const created = await herald.POST("/v1/notifications", {
  params: { header: { "Idempotency-Key": `ts-client-${Date.now()}` } },
  body: {
    route: "fallback",
    subject: "From TypeScript",
    text: "Sent by a client generated from openapi.yaml",
    severity: "warning",
    metadata: { client: "openapi-fetch" },
  },
});
if (created.error) fail("create", created.error);
const id = created.data.id;

let notification: Notification = created.data;
for (let i = 0; i < 150 && !FINAL.has(notification.status); i++) {
  await new Promise((resolve) => setTimeout(resolve, 100));
  const polled = await herald.GET("/v1/notifications/{notification_id}", {
    params: { path: { notification_id: id } },
  });
  if (polled.error) fail("poll", polled.error);
  notification = polled.data;
}

const attempts = await herald.GET("/v1/notifications/{notification_id}/attempts", {
  params: { path: { notification_id: id } },
});
if (attempts.error) fail("attempts", attempts.error);

const missing = await herald.GET("/v1/notifications/{notification_id}", {
  params: { path: { notification_id: "00000000-0000-0000-0000-000000000000" } },
});
const invalid = await herald.POST("/v1/notifications", {
  body: { route: "no-such-route", text: "refused" },
});
const listed = await herald.GET("/v1/notifications", {
  params: { query: { status: "delivered", limit: 10 } },
});
if (listed.error) fail("list", listed.error);

// `wait`: the answer to the POST is already final; a wait that runs out answers the current
// state with `Herald-Wait: timeout`.
const waited = await herald.POST("/v1/notifications", {
  params: { query: { wait: "10s" } },
  body: { route: "default", text: "Waited for by TypeScript" },
});
if (waited.error) fail("create with wait", waited.error);
const held = await herald.POST("/v1/notifications", {
  body: { route: "default", text: "Not yet", send_at: "2099-01-01T00:00:00Z" },
});
if (held.error) fail("create for later", held.error);
const waitedOut = await herald.GET("/v1/notifications/{notification_id}", {
  params: { path: { notification_id: held.data.id }, query: { wait: "500ms" } },
});
if (waitedOut.error) fail("get with wait", waitedOut.error);

console.log(
  JSON.stringify({
    createdStatus: created.response.status,
    id,
    status: notification.status,
    deliveredVia: notification.delivered_via,
    hops: notification.hops.map((hop) => [hop.channel, hop.state]),
    attempts: attempts.data.items.map((attempt: Attempt) => ({
      channel: attempt.channel,
      hop: attempt.hop,
      outcome: attempt.outcome,
      errorClass: attempt.error?.class ?? null,
      errorCode: attempt.error?.code ?? null,
      providerStatus: attempt.provider_status,
    })),
    notFound: { status: missing.response.status, problem: missing.error ?? null },
    invalid: { status: invalid.response.status, errors: invalid.error?.errors ?? null },
    listedIds: listed.data.items.map((item) => item.id),
    waited: {
      status: waited.response.status,
      state: waited.data.status,
      heraldWait: waited.response.headers.get("herald-wait"),
    },
    waitedOut: {
      status: waitedOut.response.status,
      state: waitedOut.data.status,
      heraldWait: waitedOut.response.headers.get("herald-wait"),
    },
  }),
);
