// Reference side of the SIWE interoperability test (tests/identity/test_identity_siwe_interop.py).
//   node siwe_interop.js sign   < specs.json   -> [{message, signature, address}]
//     a fresh ethers wallet builds each SiweMessage with the reference `siwe` package and signs it (EIP-191).
//   node siwe_interop.js verify < items.json   -> [{ok, error, fields}]
//     the reference package parses messages WE produced and verifies their signatures.
'use strict';
const { SiweMessage } = require('siwe');
const { Wallet } = require('ethers');

async function readStdin() {
  const chunks = [];
  for await (const c of process.stdin) chunks.push(c);
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

async function sign(specs) {
  const wallet = Wallet.createRandom();
  const out = [];
  for (const spec of specs) {
    const msg = new SiweMessage({ ...spec, address: wallet.address });
    const message = msg.prepareMessage();
    out.push({ message, signature: await wallet.signMessage(message), address: wallet.address });
  }
  return out;
}

async function verify(items) {
  const out = [];
  for (const item of items) {
    try {
      const msg = new SiweMessage(item.message);
      const res = await msg.verify({ signature: item.signature, domain: item.domain, nonce: item.nonce,
                                     time: item.time }, { suppressExceptions: true });
      out.push({ ok: res.success, error: res.error ? String(res.error.type || res.error) : null,
                 fields: { domain: msg.domain, address: msg.address, statement: msg.statement ?? null,
                           uri: msg.uri, chainId: msg.chainId, nonce: msg.nonce, resources: msg.resources ?? null } });
    } catch (e) {
      out.push({ ok: false, error: String(e && (e.message || e)), fields: null });
    }
  }
  return out;
}

(async () => {
  const mode = process.argv[2];
  const input = await readStdin();
  const result = mode === 'sign' ? await sign(input) : mode === 'verify' ? await verify(input) : null;
  if (result === null) { console.error('usage: node siwe_interop.js sign|verify < input.json'); process.exit(2); }
  process.stdout.write(JSON.stringify(result));
})().catch(e => { console.error(e); process.exit(1); });
