// graphile-worker as a peer of warpd: jobs per second through a Node.js + PostgreSQL job queue
// for no-op jobs, and the resident memory of an idle graphile-worker process.
//
// What it does, against the (scratch) database that the libpq environment variables name
// (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD, ...; graphile-worker and node-postgres read
// them):
//   1. installs graphile-worker's schema (runMigrations);
//   2. for each configuration: adds $JOBS no-op jobs in one bulk call of the documented SQL API
//      graphile_worker.add_jobs(job_spec[]), ANALYZEs the job table, starts a worker (run())
//      and measures from the start of the first job to the moment the last job is completed
//      (deleted from the queue; polled every 2 ms once the task has run $JOBS times);
//   3. starts the graphile-worker CLI with its defaults and one no-op task, lets it idle for
//      $IDLE_SECONDS seconds once it reports that it is looking for jobs, and reads VmRSS from
//      /proc/<pid>/status.
// Configurations (CONFIGS, default "default best"):
//   default  no options but the task list: concurrentJobs 1, maxPoolSize 10, pollInterval 2000,
//            prepared statements, no local queue, no completion batching;
//   best     the configuration that graphile-worker's performance page
//            (https://worker.graphile.org/docs/performance) gives for its published numbers:
//            concurrentJobs 24, maxPoolSize 25, localQueue { size: 500 },
//            completeJobBatchDelay 0, failJobBatchDelay 0 (one worker process).
//
// Run it through run.sh (which creates and drops the scratch database); by hand:
//   PGHOST=... PGPORT=... PGUSER=... PGDATABASE=<empty scratch db> node graphile_bench.mjs
// Environment: JOBS (100000), CONFIGS ("default best"), IDLE_SECONDS (10), SKIP_IDLE (1: skip 3).
// Output on stdout, nothing else:
//   graphile-worker <config> jobs=<n> jobs_per_s=<number>
//   graphile-worker idle_rss_kb=<n>
// Progress and details go to stderr; the exit status is non-zero on any failure.

import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, readFile, rm, writeFile, mkdir } from "node:fs/promises";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";

import pg from "pg";
import { Logger, run, runMigrations } from "graphile-worker";

const require = createRequire(import.meta.url);

const JOBS = positiveInt("JOBS", 100000);
const IDLE_SECONDS = positiveInt("IDLE_SECONDS", 10);
const CONFIGS = (process.env.CONFIGS ?? "default best").split(/\s+/).filter(Boolean);
const SKIP_IDLE = process.env.SKIP_IDLE === "1";

const CONFIG_PRESETS = {
  default: {},
  best: {
    concurrentJobs: 24,
    maxPoolSize: 25,
    localQueue: { size: 500 },
    completeJobBatchDelay: 0,
    failJobBatchDelay: 0,
  },
};

function positiveInt(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return fallback;
  if (!/^[1-9][0-9]*$/.test(raw)) throw new Error(`${name} must be a positive integer, not '${raw}'`);
  return Number(raw);
}

function log(message) {
  process.stderr.write(`graphile_bench: ${message}\n`);
}

// graphile-worker's own messages: warnings and errors to stderr, the rest dropped.
const quietLogger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") process.stderr.write(`graphile-worker ${level}: ${message}\n`);
});

async function withClient(fn) {
  const client = new pg.Client();
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

async function addJobs(client, n) {
  const started = performance.now();
  // One call of the bulk API: an array of job_spec rows (identifier 'noop', empty payload).
  await client.query(
    `SELECT count(*) FROM graphile_worker.add_jobs(
       array(SELECT ROW('noop', '{}'::json, NULL, NULL, NULL, NULL, NULL, NULL)::graphile_worker.job_spec
               FROM generate_series(1, $1::integer)))`,
    [n],
  );
  const seconds = (performance.now() - started) / 1000;
  await client.query("ANALYZE graphile_worker._private_jobs");
  const { rows } = await client.query("SELECT count(*)::integer AS n FROM graphile_worker._private_jobs");
  if (rows[0].n !== n) throw new Error(`expected ${n} queued jobs, found ${rows[0].n}`);
  log(`added ${n} jobs with one add_jobs call in ${seconds.toFixed(2)} s (${Math.round(n / seconds)} jobs/s)`);
}

async function measure(config) {
  const workerPreset = CONFIG_PRESETS[config];
  if (!workerPreset) throw new Error(`unknown configuration '${config}' (${Object.keys(CONFIG_PRESETS).join(", ")})`);

  await withClient((client) => addJobs(client, JOBS));

  let executed = 0;
  let firstStart = 0;
  let allRan;
  const allRanPromise = new Promise((resolve) => {
    allRan = resolve;
  });
  const taskList = {
    noop: async () => {
      if (executed === 0) firstStart = performance.now();
      executed += 1;
      if (executed === JOBS) allRan(performance.now());
    },
  };

  const failures = [];
  const runner = await run({
    taskList,
    noHandleSignals: true,
    logger: quietLogger,
    preset: { worker: workerPreset },
  });
  runner.events.on("job:error", ({ job, error }) => failures.push(`job ${job.id}: ${error}`));
  runner.events.on("job:failed", ({ job, error }) => failures.push(`job ${job.id} failed: ${error}`));

  // Once every job has run, wait (polling on a connection of its own) until the queue is empty:
  // with completion batching a job is only completed when its batch is written.
  let lastDone;
  await withClient(async (client) => {
    const lastRan = await allRanPromise;
    for (;;) {
      const { rows } = await client.query("SELECT EXISTS (SELECT 1 FROM graphile_worker._private_jobs) AS any");
      if (!rows[0].any) break;
      if (performance.now() - lastRan > 60000) throw new Error("jobs still queued 60 s after the last one ran");
      await sleep(2);
    }
    lastDone = performance.now();
  });
  await runner.stop();

  if (failures.length > 0) throw new Error(`${failures.length} job failures, e.g. ${failures[0]}`);
  if (executed !== JOBS) throw new Error(`${executed} task executions for ${JOBS} jobs`);
  const seconds = (lastDone - firstStart) / 1000;
  log(`${config}: ${JOBS} jobs in ${seconds.toFixed(2)} s; options ${JSON.stringify(workerPreset)}`);
  process.stdout.write(`graphile-worker ${config} jobs=${JOBS} jobs_per_s=${Math.round(JOBS / seconds)}\n`);
}

// The resident set of the graphile-worker CLI (node .../graphile-worker/dist/cli.js) with its
// defaults and a task directory holding one no-op task, after IDLE_SECONDS of idling.
async function idleRss() {
  const dir = await mkdtemp(join(tmpdir(), "graphile-idle-"));
  let child;
  try {
    await mkdir(join(dir, "tasks"));
    await writeFile(join(dir, "tasks", "noop.js"), "module.exports = async () => {};\n");
    const cli = require.resolve("graphile-worker/dist/cli.js");
    child = spawn(process.execPath, [cli], { cwd: dir, env: process.env, stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    const ready = new Promise((resolve, reject) => {
      const onData = (chunk) => {
        output += chunk;
        if (/looking for jobs/i.test(output)) resolve();
      };
      child.stdout.on("data", onData);
      child.stderr.on("data", onData);
      child.on("exit", (code) => reject(new Error(`graphile-worker CLI exited (${code}) before it was ready:\n${output}`)));
    });
    const readyTimeout = new AbortController();
    try {
      await Promise.race([
        ready,
        sleep(30000, undefined, { signal: readyTimeout.signal }).then(() => {
          throw new Error(`graphile-worker CLI not ready after 30 s:\n${output}`);
        }),
      ]);
    } finally {
      readyTimeout.abort();
    }
    log(`idle graphile-worker CLI, pid ${child.pid}; waiting ${IDLE_SECONDS} s`);
    await sleep(IDLE_SECONDS * 1000);
    const status = await readFile(`/proc/${child.pid}/status`, "utf8");
    const match = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
    if (!match) throw new Error(`no VmRSS in /proc/${child.pid}/status`);
    process.stdout.write(`graphile-worker idle_rss_kb=${match[1]}\n`);
  } finally {
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = once(child, "exit");
      const exitTimeout = new AbortController();
      child.kill("SIGTERM");
      await Promise.race([exited, sleep(10000, undefined, { signal: exitTimeout.signal }).catch(() => {})]);
      exitTimeout.abort();
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    }
    await rm(dir, { recursive: true, force: true });
  }
}

async function main() {
  if (!process.env.PGDATABASE) throw new Error("set PGDATABASE (and PGHOST, PGPORT, PGUSER) to a scratch database");
  const version = require("graphile-worker/package.json").version;
  log(`graphile-worker ${version}, node ${process.version}, database ${process.env.PGDATABASE}`);
  await runMigrations({ logger: quietLogger });
  for (const config of CONFIGS) await measure(config);
  if (!SKIP_IDLE) await idleRss();
}

main().catch((error) => {
  log(`error: ${error?.stack ?? error}`);
  process.exit(1);
});
