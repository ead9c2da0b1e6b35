// The real-client suite's Node undici client (tests/e2e/clients.rs).
//
// Usage: node undici_client.js PROXY_URL TARGET_URL CA_FILE [USER PASSWORD]
// with undici resolvable (NODE_PATH: make client-deps installs it under
// target/clients/node). Prints `status=CODE body=FIRST-LINE` when the origin
// answered, else `error=...`; exits 0 only for the origin. Credentials: in
// the proxy URL (ProxyAgent sends them with the CONNECT).
'use strict';

const fs = require('fs');
const { ProxyAgent, request } = require('undici');

async function main() {
  const [proxyArg, url, caFile, user, password] = process.argv.slice(2);
  const proxy = new URL(proxyArg);
  if (user !== undefined) {
    proxy.username = encodeURIComponent(user);
    proxy.password = encodeURIComponent(password);
  }
  const agent = new ProxyAgent({
    uri: proxy.toString(),
    requestTls: { ca: fs.readFileSync(caFile) },
    connectTimeout: 15000,
  });
  try {
    const response = await request(url, { dispatcher: agent, headersTimeout: 15000, bodyTimeout: 15000 });
    const body = await response.body.text();
    console.log(`status=${response.statusCode} body=${body.split('\n')[0]}`);
    return 0;
  } catch (error) {
    console.log(`error=${error.name}: ${error.message}${error.cause ? ` (${error.cause.message})` : ''}`);
    return 1;
  } finally {
    await agent.close();
  }
}

main().then((code) => process.exit(code));
