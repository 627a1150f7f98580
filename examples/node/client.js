// latentface from Node.js: health check, create a collection, enroll a photo, identify it.
//
//   npm install @grpc/grpc-js@1.14 @grpc/proto-loader@0.8
//   node examples/node/client.js 127.0.0.1:50051 "$(cat data/admin.key)" photo.jpg
//
// Prints one JSON object with what the server answered. Three things every Node client needs:
// - proto-loader resolves `import "latentface/v1/common.proto"` only with includeDirs set to proto/;
// - the standard health service is proto/grpc/health/v1/health.proto (the server does not ship
//   generated JS, and reflection is an alternative);
// - fields are camelCase in JS objects (subject_id -> subjectId) unless keepCase is set.
'use strict';

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_DIR = path.resolve(__dirname, '..', '..', 'proto');
const definition = protoLoader.loadSync(
  ['latentface/v1/face.proto', 'latentface/v1/collection.proto', 'grpc/health/v1/health.proto'],
  { includeDirs: [PROTO_DIR], longs: String, enums: String, defaults: true, oneofs: true },
);
const api = grpc.loadPackageDefinition(definition);

function call(client, method, request, metadata) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 60000);  // always set one: the server applies its own default otherwise
    client[method](request, metadata, { deadline }, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

async function main() {
  const [address, apiKey, imagePath, collection = 'node-demo'] = process.argv.slice(2);
  const credentials = grpc.credentials.createInsecure();  // grpc.credentials.createSsl(ca) with TLS
  const metadata = new grpc.Metadata();
  metadata.add('authorization', `Bearer ${apiKey}`);
  const noKey = new grpc.Metadata();  // health needs no key

  const health = new api.grpc.health.v1.Health(address, credentials);
  const faces = new api.latentface.v1.FaceService(address, credentials);
  const collections = new api.latentface.v1.CollectionService(address, credentials);

  const out = {};
  out.health = (await call(health, 'Check', { service: '' }, noKey)).status;
  try {
    await call(collections, 'CreateCollection', { name: collection }, metadata);
  } catch (err) {
    if (err.code !== grpc.status.ALREADY_EXISTS) throw err;
  }
  const image = fs.readFileSync(imagePath);
  const enrolled = await call(faces, 'Enroll', { collection, subjectId: 'alice', images: [image] }, metadata);
  out.enrolled = { subjectId: enrolled.subjectId, faceIds: enrolled.faceIds };
  const found = await call(faces, 'Identify', { collection, image, k: 1 }, metadata);
  out.candidates = found.candidates.map((c) => ({
    subjectId: c.subjectId, score: c.decision.score, threshold: c.decision.threshold, isMatch: c.decision.isMatch,
  }));
  try {
    await call(faces, 'GetSubject', { collection, subjectId: 'nobody' }, metadata);
  } catch (err) {
    out.missing = { code: grpc.status[err.code], details: err.details };  // NOT_FOUND, with a message
  }
  for (const c of [health, faces, collections]) c.close();
  console.log(JSON.stringify(out));
}

main().catch((err) => {
  console.error(`error: ${err.code !== undefined ? grpc.status[err.code] : ''} ${err.details || err.message}`);
  process.exit(1);
});
