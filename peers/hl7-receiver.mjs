// An HL7 v2 MLLP receiver built on @medplum/hl7 4.5.2 (Medplum's own HL7 connection code), for phg's tests:
// every message is parsed by Medplum's Hl7Message and answered with its buildAck() (AA, MSA-2 = MSH-10).
// Hl7Server.start() listens on all interfaces, so the net.Server is ours, bound to 127.0.0.1, and each
// socket is handed to an Hl7Connection.
//
// Usage: node hl7-receiver.mjs [--port 0] [--ready-file path] [--received path] [--ack-code AA]
// Writes {"port"} to --ready-file when listening; appends each received MSH-10 (one per line) to --received.
import { appendFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { parseArgs } from 'node:util';

import { Hl7Connection } from '@medplum/hl7';
import { announceReady, exitWithParent } from './lifecycle.mjs';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    'ready-file': { type: 'string', default: '' },
    received: { type: 'string', default: '' },
    'ack-code': { type: 'string', default: 'AA' },
  },
});

const server = createServer((socket) => {
  const connection = new Hl7Connection(socket, 'utf-8');
  connection.addEventListener('message', (event) => {
    const message = event.message;
    const controlId = message.getSegment('MSH')?.getField(10)?.toString() ?? '';
    if (args.received) {
      appendFileSync(args.received, `${controlId}\n`);
    }
    connection.send(message.buildAck({ ackCode: args['ack-code'] }));
  });
  connection.addEventListener('error', (event) => console.error('hl7 connection error:', event.error?.message));
});

server.listen(Number(args.port), '127.0.0.1', () => {
  const { port } = server.address();
  announceReady(args['ready-file'], { port });
});

exitWithParent(server);
