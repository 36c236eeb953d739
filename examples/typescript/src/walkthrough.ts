// The README's walk-through as a Node client of authsvc: Login, Challenge (and a refused resend,
// whose rich error details it decodes), Verify with the code read from the file provider's
// outbox, ValidateSession, a step-up whose grant it redeems, Logout, and the refused
// ValidateSession of the ended session.
//
// Stubs: protoc-gen-es output in gen/ (`make examples`); transport: Connect-ES speaking the gRPC
// protocol over HTTP/2. Settings (environment): AUTHSVC_EXAMPLE_SERVER (127.0.0.1:50051),
// AUTHSVC_CLIENT_API_KEY (else var/dev-backend.key), AUTHSVC_EXAMPLE_ORG, AUTHSVC_EXAMPLE_LOGIN,
// AUTHSVC_CLIENT_PASSWORD, AUTHSVC_OUTBOX_FILE (var/outbox.jsonl).

import { existsSync, readFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";

import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import { AuthService } from "../gen/authsvc/v1/auth_service_pb.js";
import { AssuranceLevel, Role, SensitiveAction } from "../gen/authsvc/v1/common_pb.js";
import { ErrorInfoSchema, RetryInfoSchema } from "../gen/google/rpc/error_details_pb.js";

const env = process.env;
const server = env.AUTHSVC_EXAMPLE_SERVER ?? "127.0.0.1:50051";
const organizationSiret = env.AUTHSVC_EXAMPLE_ORG ?? "21180001500011";
const login = env.AUTHSVC_EXAMPLE_LOGIN ?? "admin";
const outboxFile = env.AUTHSVC_OUTBOX_FILE ?? "var/outbox.jsonl";
const client = { ipAddress: "127.0.0.1", userAgent: "authsvc-example-typescript" };

function apiKey(): string {
  const key = env.AUTHSVC_CLIENT_API_KEY?.trim();
  if (key) return key;
  if (existsSync("var/dev-backend.key")) return readFileSync("var/dev-backend.key", "utf8").trim();
  throw new Error("set AUTHSVC_CLIENT_API_KEY (the backend's API key)");
}

function password(): string {
  const value = env.AUTHSVC_CLIENT_PASSWORD;
  if (!value) throw new Error("set AUTHSVC_CLIENT_PASSWORD");
  return value;
}

// Every call carries the backend's credentials; the end user's context travels in the request.
const key = apiKey();
const withApiKey: Interceptor = (next) => async (request) => {
  request.header.set("authorization", `Bearer ${key}`);
  return next(request);
};
const auth = createClient(
  AuthService,
  createGrpcTransport({ baseUrl: `http://${server}`, interceptors: [withApiKey] }),
);

// The file provider appends one JSON object per message; the code ends the SMS text ("#123456").
function outboxLines(): string[] {
  if (!existsSync(outboxFile)) return [];
  return readFileSync(outboxFile, "utf8").split("\n").filter((line) => line.length > 0);
}

async function codeSentAfter(seen: number): Promise<string> {
  for (let attempt = 0; attempt < 500; attempt++) {
    for (const line of outboxLines().slice(seen)) {
      const message = JSON.parse(line) as { channel: string; text: string };
      const match = /#(\d{6})$/.exec(message.text);
      if (message.channel === "sms" && match?.[1]) return match[1];
    }
    await sleep(20);
  }
  throw new Error(`no code in ${outboxFile}`);
}

// Connect names codes in PascalCase (ResourceExhausted); print the gRPC spelling.
function grpcCodeName(code: Code): string {
  return Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

// A refused call's google.rpc.Status (grpc-status-details-bin): ErrorInfo and RetryInfo.
function describeRefusal(error: unknown): string {
  const refusal = ConnectError.from(error);
  const info = refusal.findDetails(ErrorInfoSchema)[0];
  if (!info) throw refusal; // not a deliberate answer of the service
  const retry = refusal.findDetails(RetryInfoSchema)[0]?.retryDelay;
  const wait = retry ? ` retry_after=${retry.seconds}s` : "";
  return `${grpcCodeName(refusal.code)} ${info.domain}/${info.reason}${wait}`;
}

async function refused(call: () => Promise<unknown>): Promise<string> {
  try {
    await call();
  } catch (error) {
    return describeRefusal(error);
  }
  throw new Error("the call was expected to be refused");
}

async function main(): Promise<void> {
  const started = await auth.login({
    organizationSiret,
    login,
    credential: { case: "password", value: { password: password() } },
    client,
  });
  if (started.result.case !== "pendingFlow") throw new Error("expected a pending flow (no device token sent)");
  const flowId = started.result.value.flowId;
  console.log(`login: a code is required (flow ${flowId})`);

  let seen = outboxLines().length;
  const challenge = await auth.challenge({ flowId, client });
  console.log(`challenge: code sent to ${challenge.maskedDestination}, ${challenge.sendsRemaining} sends left`);
  console.log(`resend refused: ${await refused(() => auth.challenge({ flowId, client }))}`);

  const verified = await auth.verify({ flowId, code: await codeSentAfter(seen), client });
  if (verified.result.case !== "login") throw new Error("expected a login verification");
  const sessionToken = verified.result.value.session?.token ?? "";
  console.log("verify: session opened, device trusted");

  const who = await auth.validateSession({ sessionToken, client });
  console.log(`validate: ${who.login} ${Role[who.role]} ${AssuranceLevel[who.assuranceLevel]}`);

  const action = SensitiveAction.CHANGE_OWN_PASSWORD;
  const stepUp = await auth.authorizeSensitiveAction({ sessionToken, action, newValues: {}, client });
  const stepUpFlow = stepUp.pendingFlow?.flowId ?? "";
  seen = outboxLines().length;
  await auth.challenge({ flowId: stepUpFlow, client });
  const granted = await auth.verify({ flowId: stepUpFlow, code: await codeSentAfter(seen), client });
  if (granted.result.case !== "actionGrant") throw new Error("expected an action grant");
  const grant = granted.result.value;
  await auth.redeemActionGrant({
    sessionToken,
    grantToken: grant.grantToken,
    action,
    targetAccountId: grant.targetAccountId,
    newValues: {},
    client,
  });
  console.log(`step-up: grant for ${SensitiveAction[action]} redeemed`);

  await auth.logout({ sessionToken, client });
  console.log("logout: done");
  console.log(`validate after logout refused: ${await refused(() => auth.validateSession({ sessionToken, client }))}`);
  console.log("walk-through complete");
}

await main();
