// Test OpenID provider for woci's end-to-end tests.
//
// A real panva/oidc-provider configured only from environment variables, with
// its own small login and consent pages (a real password check) and every
// interesting library event written as one JSON object per line on stdout so
// the Python side (tests/bed/idp.py) can assert on what happened server-side.
//
// Environment (see tests/bed/idp.py for the launcher):
//   IDP_PORT (required)                 listen on 127.0.0.1:<port>; issuer http://127.0.0.1:<port>
//   IDP_AUDIENCE=urn:oci:woci           audience of the JWT access tokens
//   IDP_ACCESS_TOKEN_TTL=300            seconds
//   IDP_REFRESH_TOKEN_TTL=86400         seconds
//   IDP_ID_TOKEN_TTL=300                seconds
//   IDP_DEVICE_INTERVAL=1               seconds, advertised in the device authorization response
//   IDP_DEVICE_CODE_TTL=600             seconds a device code (and its user code) lives
//
// Runtime switches for the device flow (tests/bed/idp.py: device_control()):
//   POST /test/device-control {"slow_down": N, "code_ttl": S}  the next N device-code polls
//   answer slow_down; device codes issued from now on live S seconds. Any field left out
//   keeps its value; the answer is the switches as they are now.
//   IDP_CONFIDENTIAL_CLIENT_SECRET=s3cret-confidential
//   IDP_USER=alice  IDP_PASSWORD=wonderland-42
//   IDP_STRICT_OFFLINE_ACCESS=0|1       1: the library's default (offline_access needs prompt=consent)

import { AsyncLocalStorage } from 'node:async_hooks';
import crypto from 'node:crypto';
import http from 'node:http';
import process from 'node:process';

import Provider, { errors } from 'oidc-provider';

// ---------------------------------------------------------------- settings

function intEnv(name, dflt) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return dflt;
  const value = Number.parseInt(raw, 10);
  if (!Number.isFinite(value) || value <= 0 || String(value) !== raw.trim()) {
    throw new Error(`${name} must be a positive integer, got ${JSON.stringify(raw)}`);
  }
  return value;
}

const PORT = intEnv('IDP_PORT', 0);
if (!PORT) {
  // The launcher always picks the port; refusing to guess keeps parallel runs apart.
  process.stderr.write('IDP_PORT is required\n');
  process.exit(2);
}
const HOST = '127.0.0.1';
const ISSUER = `http://${HOST}:${PORT}`;
const AUDIENCE = process.env.IDP_AUDIENCE || 'urn:oci:woci';
const ACCESS_TOKEN_TTL = intEnv('IDP_ACCESS_TOKEN_TTL', 300);
const REFRESH_TOKEN_TTL = intEnv('IDP_REFRESH_TOKEN_TTL', 86400);
const ID_TOKEN_TTL = intEnv('IDP_ID_TOKEN_TTL', 300);
const DEVICE_INTERVAL = intEnv('IDP_DEVICE_INTERVAL', 1);
const DEVICE_CODE_TTL = intEnv('IDP_DEVICE_CODE_TTL', 600);
const CONFIDENTIAL_SECRET = process.env.IDP_CONFIDENTIAL_CLIENT_SECRET || 's3cret-confidential';
const USER = process.env.IDP_USER || 'alice';
const PASSWORD = process.env.IDP_PASSWORD || 'wonderland-42';
const STRICT_OFFLINE_ACCESS = ['1', 'true', 'yes'].includes(
  (process.env.IDP_STRICT_OFFLINE_ACCESS || '').toLowerCase(),
);

// ---------------------------------------------------------------- events

// One JSON object per line; the Python side only parses lines starting with '{'.
// Only non-secret fields are ever written: no token, code, verifier or secret value.
function emit(event, fields = {}) {
  const line = JSON.stringify({ event, t: Date.now() / 1000, ...fields });
  process.stdout.write(`${line}\n`);
}

// Names a token without revealing it: the first 16 hex digits of its SHA-256 (64 bits of a
// hash of a random 256-bit value), so a test holding the token can tell which one it was.
// tests/bed/idp.py token_fingerprint() computes the same.
function fingerprint(value) {
  if (typeof value !== 'string' || value === '') return null;
  return crypto.createHash('sha256').update(value).digest('hex').slice(0, 16);
}

// The library's errors carry a public part (error, error_description) and a
// private reason (error_detail, e.g. "refresh token already used") that never
// reaches the client: the tests need the latter to tell failure causes apart.
function errorFields(err) {
  if (!err) return {};
  return {
    error: err.error || err.name || null,
    error_description: err.error_description || null,
    error_detail: err.error_detail || null,
    message: err.message || null,
    status: err.statusCode || err.status || null,
  };
}

function ctxFields(ctx) {
  const fields = {};
  const oidc = ctx?.oidc;
  if (oidc?.client?.clientId) fields.client_id = oidc.client.clientId;
  else if (oidc?.params?.client_id) fields.client_id = oidc.params.client_id;
  if (oidc?.params?.grant_type) fields.grant_type = oidc.params.grant_type;
  if (oidc?.route) fields.route = oidc.route;
  return fields;
}

// ---------------------------------------------------------------- account

// Claims by scope; `sub` is the user name so tests can predict it.
async function findAccount(_ctx, id) {
  if (id !== USER) return undefined;
  return {
    accountId: id,
    async claims() {
      return {
        sub: id,
        email: `${id}@example.test`,
        email_verified: true,
        name: id,
        preferred_username: id,
      };
    },
  };
}

// ---------------------------------------------------------------- keys

// A fresh RSA key per run: no key file to manage, and the library then does not
// fall back to its development-only keys (which print a warning).
const signingKey = {
  ...crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' }),
  kid: crypto.randomUUID(),
  use: 'sig',
  alg: 'RS256',
};

// ---------------------------------------------------------------- device flow switches

// Changed at runtime through POST /test/device-control (see the header).
const deviceControl = { slowDown: 0, codeTtl: DEVICE_CODE_TTL };

function positiveOrZero(value) {
  return Number.isInteger(value) && value >= 0;
}

async function handleDeviceControl(req, res) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  let body;
  try {
    body = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
  } catch {
    body = null;
  }
  const ok = body && typeof body === 'object'
    && (body.slow_down === undefined || positiveOrZero(body.slow_down))
    && (body.code_ttl === undefined || (positiveOrZero(body.code_ttl) && body.code_ttl > 0));
  if (!ok) {
    res.statusCode = 400;
    res.setHeader('Content-Type', 'application/json');
    res.end(JSON.stringify({ error: 'want {"slow_down": int >= 0, "code_ttl": int > 0}' }));
    return;
  }
  if (body.slow_down !== undefined) deviceControl.slowDown = body.slow_down;
  if (body.code_ttl !== undefined) deviceControl.codeTtl = body.code_ttl;
  emit('device.control', { slow_down: deviceControl.slowDown, code_ttl: deviceControl.codeTtl });
  res.statusCode = 200;
  res.setHeader('Content-Type', 'application/json');
  res.end(JSON.stringify({ slow_down: deviceControl.slowDown, code_ttl: deviceControl.codeTtl }));
}

// ---------------------------------------------------------------- device pages

// Contract for scripted users: user code input `user_code` + button
// `#submit-code`; confirm page buttons `#confirm` / `#abort`; success page
// `#device-success`. The library supplies the <form> (with its xsrf field);
// the buttons reference it through their `form` attribute.
async function deviceInputPage(ctx, form, _out, err) {
  let msg = '<p>Enter the code displayed on your device</p>';
  if (err && (err.userCode || err.name === 'NoCodeError')) {
    msg = '<p class="error" id="error">The code you entered is incorrect. Try again</p>';
  } else if (err && err.name === 'AbortedError') {
    msg = '<p class="error" id="error">The Sign-in request was interrupted</p>';
  } else if (err) {
    msg = '<p class="error" id="error">There was an error processing your request</p>';
  }
  ctx.type = 'html';
  ctx.body = page('Device sign-in', `<h1>Device sign-in</h1>${msg}${form}
<button type="submit" id="submit-code" form="op.deviceInputForm">Continue</button>`);
}

async function deviceConfirmPage(ctx, form, client, _deviceInfo, userCode) {
  ctx.type = 'html';
  ctx.body = page('Confirm device', `<h1>Confirm device</h1>
<p><code>${esc(client.clientId)}</code> shows the code <code id="user-code">${esc(userCode)}</code></p>${form}
<button type="submit" id="confirm" form="op.deviceConfirmForm">Continue</button>
<button type="submit" id="abort" form="op.deviceConfirmForm" name="abort" value="yes">Abort</button>`);
}

async function deviceSuccessPage(ctx) {
  ctx.type = 'html';
  ctx.body = page('Signed in', '<h1 id="device-success">Sign-in Success</h1><p>You can close this page.</p>');
}

// ---------------------------------------------------------------- provider

const GRANT_TYPES = [
  'authorization_code',
  'refresh_token',
  'urn:ietf:params:oauth:grant-type:device_code',
];
// application_type native + a port-less loopback URI = any loopback port matches.
const REDIRECT_URIS = ['http://127.0.0.1/callback'];

const configuration = {
  clients: [
    {
      client_id: 'woci-public',
      application_type: 'native',
      token_endpoint_auth_method: 'none',
      redirect_uris: REDIRECT_URIS,
      grant_types: GRANT_TYPES,
      response_types: ['code'],
      scope: 'openid offline_access profile email',
    },
    {
      client_id: 'woci-confidential',
      client_secret: CONFIDENTIAL_SECRET,
      application_type: 'native',
      token_endpoint_auth_method: 'client_secret_basic',
      redirect_uris: REDIRECT_URIS,
      grant_types: GRANT_TYPES,
      response_types: ['code'],
      scope: 'openid offline_access profile email',
    },
  ],
  jwks: { keys: [signingKey] },
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  findAccount,
  scopes: ['openid', 'offline_access', 'profile', 'email'],
  // Only the code flow: what woci uses and what the discovery document should say.
  responseTypes: ['code'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
  },
  pkce: { required: () => true },
  rotateRefreshToken: true,
  ttl: {
    AccessToken: ACCESS_TOKEN_TTL,
    AuthorizationCode: 60,
    ClientCredentials: ACCESS_TOKEN_TTL,
    // Read when a device code is issued, so a test can shorten it at runtime.
    DeviceCode: () => deviceControl.codeTtl,
    // The grant must outlive every refresh token issued under it.
    Grant: REFRESH_TOKEN_TTL + 3600,
    IdToken: ID_TOKEN_TTL,
    Interaction: 600,
    RefreshToken: REFRESH_TOKEN_TTL,
    Session: REFRESH_TOKEN_TTL + 3600,
  },
  interactions: {
    url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
  },
  features: {
    devInteractions: { enabled: false },
    // Own device pages: the built-in ones pull web fonts from the internet
    // (which the Chromium user blocks) and have no stable ids for scripts.
    deviceFlow: {
      enabled: true,
      userCodeInputSource: deviceInputPage,
      userCodeConfirmSource: deviceConfirmPage,
      successSource: deviceSuccessPage,
    },
    revocation: { enabled: true },
    introspection: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // These three together give an RS256 JWT access token for AUDIENCE even
      // when the client sends no `resource` and asks for `openid` (otherwise
      // the token would be opaque, for the userinfo endpoint).
      defaultResource: () => AUDIENCE,
      useGrantedResource: () => true,
      // The OIDC scopes are also resource scopes so that the access token (and
      // the token response's `scope`) lists them, as Okta/Entra tokens do,
      // instead of an empty scope.
      getResourceServerInfo: () => ({
        scope: 'openid offline_access profile email',
        audience: AUDIENCE,
        accessTokenTTL: ACCESS_TOKEN_TTL,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
  async renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = page('Error', `<h1>Error</h1><p id="error">${esc(out.error)}</p>`
      + `<p id="error_description">${esc(out.error_description || '')}</p>`);
  },
};

const provider = new Provider(ISSUER, configuration);
// Plain http on loopback: tell Koa not to expect a TLS terminating proxy.
provider.proxy = false;

// ---------------------------------------------------------------- lenient offline_access

// The library drops `offline_access` from the authorization request unless it
// also carries prompt=consent (OIDC Core 11), and that check is hard-wired in
// the authorization chain before any configurable policy runs. Okta, Entra ID,
// Keycloak and OCI identity domains issue a refresh token anyway. To behave like
// them, add `consent` to the prompt of such requests before the library sees
// them. Native clients get the consent prompt on every authorization anyway,
// so the user-visible flow does not change; prompt=none is left alone (it must
// stand alone, and a silent request cannot show consent).
if (!STRICT_OFFLINE_ACCESS) {
  provider.use(async (ctx, next) => {
    if (ctx.method === 'GET' && ctx.path === '/auth') {
      const query = { ...ctx.query };
      const scopes = String(query.scope || '').split(' ');
      const prompts = String(query.prompt || '').split(' ').filter(Boolean);
      if (scopes.includes('offline_access') && !prompts.includes('consent') && !prompts.includes('none')) {
        query.prompt = [...prompts, 'consent'].join(' ');
        ctx.query = query;
      }
    }
    await next();
  });
}

// ---------------------------------------------------------------- device interval

// The library does not send `interval`, so RFC 8628 clients default to 5 s.
// Advertise a short one to keep device flow tests fast.
provider.use(async (ctx, next) => {
  await next();
  if (ctx.method === 'POST' && ctx.path === '/device/auth' && ctx.status === 200
      && ctx.body && typeof ctx.body === 'object') {
    ctx.body.interval = DEVICE_INTERVAL;
  }
});

// ---------------------------------------------------------------- device slow_down

// The library never answers slow_down (RFC 8628 3.5). To let a test ask for it, the token
// endpoint's look-up of a device code (the only DeviceCode.find call made with exactly
// {ignoreExpiration: true}, and only on /token) fails with slow_down while the switch says
// so. The request's path comes from an AsyncLocalStorage set for every request.
const requestPath = new AsyncLocalStorage();
provider.use(async (ctx, next) => requestPath.run(ctx.path, next));
const findDeviceCode = provider.DeviceCode.find.bind(provider.DeviceCode);
provider.DeviceCode.find = async (value, options = {}) => {
  if (requestPath.getStore() === '/token' && deviceControl.slowDown > 0) {
    deviceControl.slowDown -= 1;
    throw new errors.SlowDown();
  }
  return findDeviceCode(value, options);
};

// ---------------------------------------------------------------- token request log

// Logged after the library parsed the body, so no second body parser is needed.
// client_id may come from the Basic header: only its user part is decoded.
provider.use(async (ctx, next) => {
  if (!(ctx.method === 'POST' && ctx.path === '/token')) {
    await next();
    return;
  }
  try {
    await next();
  } finally {
    let clientId = ctx.oidc?.client?.clientId || ctx.oidc?.params?.client_id || null;
    let auth = 'none';
    const header = ctx.headers.authorization || '';
    if (header.toLowerCase().startsWith('basic ')) {
      auth = 'basic';
      if (!clientId) {
        try {
          const decoded = Buffer.from(header.slice(6).trim(), 'base64').toString();
          clientId = decodeURIComponent(decoded.split(':')[0]);
        } catch {
          clientId = null;
        }
      }
    } else if (ctx.oidc?.params?.client_secret) {
      auth = 'post';
    }
    const params = ctx.oidc?.params || {};
    const body = (ctx.body && typeof ctx.body === 'object') ? ctx.body : {};
    emit('token_request', {
      grant_type: params.grant_type || null,
      client_id: clientId,
      client_auth: auth,
      status: ctx.status,
      error: ctx.status >= 400 ? body.error || null : null,
      // What the client presented and was given, by fingerprint only.
      code_verifier_sent: Boolean(params.code_verifier),
      refresh_token_fp: fingerprint(params.refresh_token),
      issued_refresh_token_fp: ctx.status === 200 ? fingerprint(body.refresh_token) : null,
    });
  }
});

// ---------------------------------------------------------------- library events

provider.on('grant.success', (ctx) => emit('grant.success', ctxFields(ctx)));
provider.on('grant.error', (ctx, err) => emit('grant.error', { ...ctxFields(ctx), ...errorFields(err) }));
provider.on('grant.revoked', (ctx, grantId) => emit('grant.revoked', { ...ctxFields(ctx), grant_id: grantId }));
provider.on('authorization.success', (ctx) => emit('authorization.success', {
  ...ctxFields(ctx), code_challenge_method: ctx.oidc?.params?.code_challenge_method || null,
}));
provider.on('authorization.error', (ctx, err) => emit('authorization.error', { ...ctxFields(ctx), ...errorFields(err) }));
provider.on('end_session.success', (ctx) => emit('end_session.success', ctxFields(ctx)));
provider.on('server_error', (ctx, err) => emit('server_error', {
  ...ctxFields(ctx), ...errorFields(err), stack: err?.stack || null,
}));
provider.on('backchannel.error', (ctx, err, client, accountId) => emit('backchannel.error', {
  ...errorFields(err), client_id: client?.clientId || null, account_id: accountId || null,
}));
provider.on('revocation.error', (ctx, err) => emit('revocation.error', { ...ctxFields(ctx), ...errorFields(err) }));
provider.on('introspection.error', (ctx, err) => emit('introspection.error', { ...ctxFields(ctx), ...errorFields(err) }));
provider.on('interaction.started', (ctx, prompt) => emit('interaction.started', {
  ...ctxFields(ctx), prompt: prompt?.name || null, reasons: prompt?.reasons || [],
}));
provider.on('interaction.ended', (ctx) => emit('interaction.ended', ctxFields(ctx)));

// Token model events: jti/grantId identify the token without revealing it
// (jti of an opaque refresh token IS the token value, so it is never logged).
function tokenFields(token) {
  return {
    client_id: token?.clientId || null,
    grant_id: token?.grantId || null,
    gty: token?.gty || null,
    account_id: token?.accountId || null,
    scope: token?.scope || null,
  };
}
provider.on('refresh_token.consumed', (token) => emit('refresh_token.consumed', {
  ...tokenFields(token), rotations: token?.rotations ?? null,
}));
provider.on('refresh_token.destroyed', (token) => emit('refresh_token.destroyed', tokenFields(token)));
provider.on('access_token.issued', (token) => emit('access_token.issued', {
  ...tokenFields(token), aud: token?.aud || null, format: token?.format || null, ttl: token?.expiration ?? null,
}));

// ---------------------------------------------------------------- pages

function esc(value) {
  return String(value ?? '').replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  }[c]));
}

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(title)}</title>
<style>body{font-family:sans-serif;max-width:28em;margin:3em auto}
.error{color:#b00020;font-weight:bold}input,button{display:block;margin:.5em 0}</style>
</head><body>${body}</body></html>`;
}

// The form names and ids are the contract for the scripted user
// (tests/bed/browser_user.py) and the real browser (tests/bed/chromium_user.py):
// login form: inputs `login`, `password`, button `#submit`;
// consent form: buttons `#allow` / `#deny` (name `decision`).
function loginPage(uid, clientId, message, login = '') {
  return page('Sign in', `<h1>Sign in</h1>
<p>to continue to <code>${esc(clientId)}</code></p>
${message ? `<p class="error" id="error">${esc(message)}</p>` : ''}
<form id="login-form" method="post" action="/interaction/${esc(uid)}/login" autocomplete="off">
<label>User name <input type="text" name="login" id="login" value="${esc(login)}" autofocus required></label>
<label>Password <input type="password" name="password" id="password" required></label>
<button type="submit" id="submit">Sign in</button>
</form>`);
}

function consentPage(uid, clientId, scopes) {
  return page('Authorize', `<h1>Authorize</h1>
<p><code>${esc(clientId)}</code> asks for: <span id="scopes">${esc(scopes.join(' '))}</span></p>
<form id="consent-form" method="post" action="/interaction/${esc(uid)}/confirm">
<button type="submit" id="allow" name="decision" value="allow">Allow</button>
<button type="submit" id="deny" name="decision" value="deny">Deny</button>
</form>`);
}

function send(res, status, html) {
  res.statusCode = status;
  res.setHeader('Content-Type', 'text/html; charset=utf-8');
  res.setHeader('Cache-Control', 'no-store');
  res.end(html);
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

// Grant everything the library says is missing, as its documentation's
// example does; the grant then covers the requested OIDC and resource scopes.
async function grantConsent(details) {
  const { prompt: { details: missing }, params, session } = details;
  let grant;
  if (details.grantId) {
    grant = await provider.Grant.find(details.grantId);
  }
  if (!grant) {
    grant = new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  }
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  if (missing.missingResourceScopes) {
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes)) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
  }
  const grantId = await grant.save();
  return details.grantId ? {} : { grantId };
}

async function handleInteraction(req, res, url) {
  const parts = url.pathname.split('/').filter(Boolean); // ['interaction', uid, action?]
  const [, uid, action] = parts;
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    // Unknown/expired interaction or a missing cookie (a different cookie jar).
    send(res, 400, page('Error', `<h1>Error</h1><p id="error">${esc(err.message)}</p>`));
    emit('interaction.invalid', { message: err.message || null, path: `/interaction/${uid}` });
    return;
  }
  if (details.uid !== uid) {
    send(res, 400, page('Error', '<h1>Error</h1><p id="error">interaction mismatch</p>'));
    return;
  }
  const clientId = details.params.client_id;
  const promptName = details.prompt.name;

  if (req.method === 'GET' && !action) {
    if (promptName === 'login') {
      send(res, 200, loginPage(uid, clientId, null));
    } else if (promptName === 'consent') {
      send(res, 200, consentPage(uid, clientId, String(details.params.scope || '').split(' ').filter(Boolean)));
    } else {
      send(res, 400, page('Error', `<h1>Error</h1><p id="error">unsupported prompt ${esc(promptName)}</p>`));
    }
    return;
  }

  if (req.method === 'POST' && action === 'login' && promptName === 'login') {
    const form = await readForm(req);
    const login = form.get('login') || '';
    const password = form.get('password') || '';
    // Constant-time compare so the test IdP does not model a timing oracle.
    const okUser = login === USER;
    const a = Buffer.from(password);
    const b = Buffer.from(PASSWORD);
    const okPassword = a.length === b.length && crypto.timingSafeEqual(a, b);
    if (!(okUser && okPassword)) {
      emit('login.failed', { client_id: clientId, login });
      send(res, 200, loginPage(uid, clientId, 'Invalid user name or password', login));
      return;
    }
    emit('login.success', { client_id: clientId, login });
    await provider.interactionFinished(req, res, { login: { accountId: login } }, { mergeWithLastSubmission: false });
    return;
  }

  if (req.method === 'POST' && action === 'confirm' && promptName === 'consent') {
    const form = await readForm(req);
    if (form.get('decision') === 'allow') {
      const consent = await grantConsent(details);
      emit('consent.allowed', { client_id: clientId });
      await provider.interactionFinished(req, res, { consent }, { mergeWithLastSubmission: true });
    } else {
      emit('consent.denied', { client_id: clientId });
      await provider.interactionFinished(req, res, {
        error: 'access_denied',
        error_description: 'End-User denied the authorization request',
      }, { mergeWithLastSubmission: false });
    }
    return;
  }

  send(res, 400, page('Error', '<h1>Error</h1><p id="error">unexpected request for this interaction</p>'));
}

// ---------------------------------------------------------------- server

const providerCallback = provider.callback();

// GET /__test/sync?id=X answers 204 and emits `sync` {id}: once the Python side has read that
// event it has read every event of every request answered before (stdout is one ordered pipe).
const SYNC_PATH = '/__test/sync';

const server = http.createServer((req, res) => {
  const url = new URL(req.url, ISSUER);
  if (req.method === 'GET' && url.pathname === SYNC_PATH) {
    emit('sync', { id: url.searchParams.get('id') });
    res.statusCode = 204;
    res.end();
    return;
  }
  // Every request that reaches the provider, by method and path (never the query: it can
  // carry state, codes or challenges).
  emit('http_request', { method: req.method, path: url.pathname });
  if (url.pathname === '/test/device-control' && req.method === 'POST') {
    handleDeviceControl(req, res).catch((err) => {
      emit('server_error', { route: 'device-control', message: err?.message || String(err) });
      if (!res.headersSent) send(res, 500, page('Error', '<h1>Internal error</h1>'));
      else res.end();
    });
    return;
  }
  if (url.pathname.startsWith('/interaction/')) {
    handleInteraction(req, res, url).catch((err) => {
      emit('server_error', { route: 'interaction', message: err?.message || String(err), stack: err?.stack || null });
      if (!res.headersSent) send(res, 500, page('Error', '<h1>Internal error</h1>'));
      else res.end();
    });
    return;
  }
  providerCallback(req, res);
});

// Tests stop the server with SIGTERM; keep-alive sockets must not hold us up.
server.keepAliveTimeout = 1000;

function shutdown(signal) {
  emit('stopping', { signal });
  server.close();
  server.closeAllConnections?.();
  // All state is in memory and stdout writes to a pipe are synchronous on
  // Linux, so there is nothing to wait for beyond the current tick.
  setTimeout(() => process.exit(0), 50).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

server.on('error', (err) => {
  emit('listen_error', { message: err.message, code: err.code || null });
  process.exit(1);
});

server.listen(PORT, HOST, () => {
  emit('listening', {
    issuer: ISSUER,
    port: PORT,
    audience: AUDIENCE,
    strict_offline_access: STRICT_OFFLINE_ACCESS,
    access_token_ttl: ACCESS_TOKEN_TTL,
    refresh_token_ttl: REFRESH_TOKEN_TTL,
    id_token_ttl: ID_TOKEN_TTL,
    device_interval: DEVICE_INTERVAL,
    device_code_ttl: DEVICE_CODE_TTL,
    pid: process.pid,
  });
});
