// Drives a running Hangar with fly-admin, a third-party TypeScript client of
// Fly's Machines API, changing nothing but its base URL and token. Each
// call's outcome is printed; the exit status is the number of failures.
// Run by scripts/fly-client-check, which installs the client.
// fly-admin's createClient() takes no options; its Client class takes the
// base URL (`apiUrl`) beside the token.
import clientModule from 'fly-admin/dist/client.js';

const Client = clientModule.default;
const api = process.env.HANGAR_API;
const token = process.env.HANGAR_TOKEN;
const image = process.argv[2] || 'toolbox:v1';
const fly = new Client(token, { apiUrl: api });
const app = `flyadmin-${Date.now().toString(36)}`;
let failures = 0;

async function step(name, f, check = () => true) {
  try {
    const out = await f();
    if (!check(out)) throw new Error(`unexpected answer: ${JSON.stringify(out)}`);
    console.log(`ok   ${name}`);
    return out;
  } catch (e) {
    failures += 1;
    console.log(`FAIL ${name}: ${e.message}`);
    return undefined;
  }
}

await step('App.createApp', () => fly.App.createApp({ app_name: app, org_slug: 'personal' }));
await step('App.listApps', () => fly.App.listApps('personal'),
  (r) => r.apps.some((a) => a.name === app));
await step('App.getApp', () => fly.App.getApp(app), (r) => r.name === app);
const m = await step('Machine.createMachine', () => fly.Machine.createMachine({
  app_name: app, region: 'lhr',
  config: { image, init: { cmd: ['sleep'] }, guest: { cpus: 1, memory_mb: 128, cpu_kind: 'shared' },
            restart: { policy: 'no' } },
}), (r) => r.id && r.region === 'lhr');
const id = m && m.id;
const mm = { app_name: app, machine_id: id };
await step('Machine.waitMachine started', () => fly.Machine.waitMachine({ ...mm, state: 'started', timeout: '30s' }));
await step('Machine.getMachine', () => fly.Machine.getMachine(mm), (r) => r.state === 'started');
await step('Machine.listMachines', () => fly.Machine.listMachines(app), (r) => r.length === 1);
await step('Machine.listProcesses', () => fly.Machine.listProcesses(mm), (r) => r.length >= 1);
await step('Machine.listVersions', () => fly.Machine.listVersions(mm), (r) => r.length === 1);
await step('Machine.acquireLease', () => fly.Machine.acquireLease({ ...mm, ttl: 30 }),
  (r) => r.data && r.data.nonce);
await step('Machine.getLease', () => fly.Machine.getLease(mm), (r) => r.data && r.data.nonce);
await step('Machine.cordonMachine (leased: refused)', async () => {
  try { await fly.Machine.cordonMachine(mm); } catch (e) { if (e.message.startsWith('409')) return 'refused'; throw e; }
  throw new Error('a leased machine took a change without the nonce');
});
await step('Machine.updateMachine (leased: refused)', async () => {
  try { await fly.Machine.updateMachine({ ...mm, config: { image } }); } catch (e) { if (e.message.startsWith('409')) return 'refused'; throw e; }
  throw new Error('a leased machine took a change without the nonce');
});
await step('Machine.listEvents', () => fly.Machine.listEvents(mm),
  (r) => r.length >= 1 && typeof r[0].timestamp === 'number');
// The lease from acquireLease lasts 30 s; fly-admin cannot release it, so
// the remaining changes go to a second machine.
const m2 = await step('Machine.createMachine (second)', () => fly.Machine.createMachine({
  app_name: app, config: { image, init: { cmd: ['sleep'] }, guest: { memory_mb: 128 } },
}), (r) => r.id);
const mm2 = { app_name: app, machine_id: m2 && m2.id };
await step('Machine.waitMachine started (second)', () => fly.Machine.waitMachine({ ...mm2, state: 'started', timeout: '30s' }));
await step('Machine.cordonMachine', () => fly.Machine.cordonMachine(mm2));
await step('Machine.uncordonMachine', () => fly.Machine.uncordonMachine(mm2));
await step('Machine.restartMachine', () => fly.Machine.restartMachine(mm2));
await step('Machine.waitMachine started (after restart)', () => fly.Machine.waitMachine({ ...mm2, state: 'started', timeout: '30s' }));
await step('Machine.stopMachine', () => fly.Machine.stopMachine(mm2));
await step('Machine.waitMachine stopped', () => fly.Machine.waitMachine({ ...mm2, state: 'stopped', timeout: '30s' }));
await step('Machine.startMachine', () => fly.Machine.startMachine(mm2));
await step('Machine.waitMachine started (again)', () => fly.Machine.waitMachine({ ...mm2, state: 'started', timeout: '30s' }));
await step('Machine.signalMachine', () => fly.Machine.signalMachine({ ...mm2, signal: 'SIGKILL' }));
await step('Machine.waitMachine stopped (killed)', () => fly.Machine.waitMachine({ ...mm2, state: 'stopped', timeout: '30s' }));
await step('Machine.deleteMachine (second)', () => fly.Machine.deleteMachine(mm2));
await step('App.deleteApp (its leased, running machine too)', () => fly.App.deleteApp(app));
await step('App.getApp after delete (404)', async () => {
  try { await fly.App.getApp(app); } catch (e) { if (e.message.startsWith('404')) return 'gone'; throw e; }
  throw new Error('the app is still there');
});
console.log(failures === 0 ? 'fly-admin: every call passed' : `fly-admin: ${failures} failed`);
process.exit(failures);
