// A real OpenID Provider for the federation tests: oidc-provider (certified), configured here.
//
// Usage: node provider.mjs CONFIG.json
// CONFIG: {port, issuer, resource, jwks: {keys: [private JWKs]},
//          users: {id: {groups: [...], roles: [...] (optional, as realm_access.roles)}},
//          default_user, clients: [client metadata], access_token_ttl}
// Logins are scripted: the interaction page signs in `login_hint` (or default_user) and grants
// every scope asked for, with no form. Access tokens for `resource` are JWTs (RFC 9068) carrying
// the user's `groups`. Key rotation: the tests restart this process with another key set.
import { readFileSync } from 'node:fs';
import Provider, { errors } from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const users = config.users;

const provider = new Provider(config.issuer, {
  clients: config.clients,
  jwks: config.jwks,
  cookies: { keys: ['agentguard-test-cookie-key'] },
  scopes: ['openid', 'offline_access', 'tools.read', 'tools.call'],
  claims: { openid: ['sub'], groups: ['groups'] },
  pkce: { required: () => true },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  ttl: { AccessToken: config.access_token_ttl ?? 600 },
  async findAccount(_ctx, id) {
    if (!Object.hasOwn(users, id)) return undefined;
    return { accountId: id, claims: async () => ({ sub: id, groups: users[id].groups }) };
  },
  async extraTokenClaims(_ctx, token) {
    if (token.accountId && Object.hasOwn(users, token.accountId)) {
      const user = users[token.accountId];
      // Realm roles nested as Keycloak puts them: {"realm_access": {"roles": [...]}}.
      const nested = user.roles ? { realm_access: { roles: user.roles } } : {};
      return { groups: user.groups, ...nested };
    }
    return undefined;
  },
  features: {
    devInteractions: { enabled: false },
    registration: { enabled: true },
    clientCredentials: { enabled: true },
    // The device authorization grant (RFC 8628) for `agentguard login`; plain pages, so the
    // scripted browser reads their forms (the library's defaults also warn on every use).
    deviceFlow: {
      enabled: true,
      userCodeInputSource: async (ctx, form) => {
        ctx.body = `<!DOCTYPE html><html><body>${form}</body></html>`;
      },
      userCodeConfirmSource: async (ctx, form) => {
        ctx.body = `<!DOCTYPE html><html><body>${form}</body></html>`;
      },
      successSource: async (ctx) => {
        ctx.body = '<!DOCTYPE html><html><body>device signed in</body></html>';
      },
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (_ctx, _client, oneOf) => oneOf ?? config.resource,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, indicator) => {
        if (indicator !== config.resource) throw new errors.InvalidTarget();
        return {
          scope: 'tools.read tools.call',
          audience: config.resource,
          accessTokenTTL: config.access_token_ttl ?? 600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
});

// The device flow names a 1 s polling interval: the library names none, and RFC 8628's
// default of 5 s would make every test login wait 5 s before its first token poll.
provider.use(async (ctx, next) => {
  await next();
  if (ctx.path === '/device/auth' && ctx.status === 200 && ctx.body?.device_code) {
    ctx.body = { ...ctx.body, interval: 1 };
  }
});

// The scripted login and consent (no form, no devInteractions).
provider.use(async (ctx, next) => {
  if (!ctx.path.startsWith('/interaction/')) {
    await next();
    return;
  }
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  const { prompt, params } = details;
  let result;
  if (prompt.name === 'login') {
    // The scripted browser names the user with ?as= (device flow), else login_hint.
    const named = typeof ctx.query.as === 'string' ? ctx.query.as : params.login_hint;
    const hint = typeof named === 'string' ? named : config.default_user;
    result = { login: { accountId: hint } };
  } else {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
    const missing = prompt.details;
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    result = { consent: { grantId: await grant.save() } };
  }
  const returnTo = await provider.interactionResult(ctx.req, ctx.res, result, {
    mergeWithLastSubmission: true,
  });
  ctx.redirect(returnTo);
});

const server = provider.listen(config.port, '127.0.0.1', () => {
  process.stdout.write(`oidc ready ${config.issuer}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
