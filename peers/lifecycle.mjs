// What every peer does around its server: say when it is ready (a line on stdout and an atomically
// written --ready-file that the Python launcher polls), and exit with the process that started it
// (a killed test runner must not leave peers behind) or on SIGTERM/SIGINT.
import { renameSync, writeFileSync } from 'node:fs';

export function announceReady(readyFile, info) {
  console.log(`READY ${info.port}`);
  if (readyFile) {
    writeFileSync(`${readyFile}.tmp`, JSON.stringify(info));
    renameSync(`${readyFile}.tmp`, readyFile);
  }
}

export function exitWithParent(server) {
  const parentPid = process.ppid;
  setInterval(() => {
    if (process.ppid !== parentPid) process.exit(0);
  }, 1000).unref();
  for (const signal of ['SIGTERM', 'SIGINT']) {
    process.on(signal, () => {
      server.close();
      server.closeAllConnections?.();
      process.exit(0);
    });
  }
}
