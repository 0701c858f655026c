// The npm local-aws-sqs server on 127.0.0.1 and a port the kernel picks; started by
// `scripts/sqs-server --engine local-aws-sqs start DIR`, which reads the "listening on" line.
//
//   node scripts/local-aws-sqs/server.cjs NODE_PREFIX [aws|package]
//
// NODE_PREFIX holds node_modules/local-aws-sqs (the exact version of package-lock.json).
//
// Receive semantics (second argument, default "aws"):
//   package  the package as published: a ReceiveMessage returns early only once it has collected
//            MaxNumberOfMessages; with fewer messages available it always waits its whole
//            WaitTimeSeconds (a node fetching its one certificate with MaxNumberOfMessages 10
//            waits 20 s), and WaitTimeSeconds 0 takes 40 ms. With VisibilityTimeout 0 it can
//            return the same message several times in one response.
//   aws      as SQS documents it: a receive returns as soon as at least one message is
//            available, with up to MaxNumberOfMessages of those visible at that moment. One
//            line of the package's receive loop is changed in memory (the file on disk stays as
//            npm ci installed and checked it); if that line is not found exactly once, the
//            server refuses to start rather than run unpatched.
const fs = require("fs");
const path = require("path");
const Module = require("module");

const [prefix, semantics = "aws"] = process.argv.slice(2);
const entry = require.resolve(path.resolve(prefix, "node_modules", "local-aws-sqs"));
let lib;
if (semantics === "package") {
  lib = require(entry);
} else if (semantics === "aws") {
  const original = "if(r.length==e){clearInterval(c),clearTimeout(n),o();break}}},10)";
  const patched = "if(r.length==e)break}if(r.length>0){clearInterval(c),clearTimeout(n),o()}},10)";
  const source = fs.readFileSync(entry, "utf8");
  if (source.split(original).length !== 2) {
    console.error(`local-aws-sqs: the receive loop to patch was not found exactly once in ${entry}; use "package" semantics`);
    process.exit(3);
  }
  const m = new Module(entry, module);
  m.filename = entry;
  m.paths = Module._nodeModulePaths(path.dirname(entry));
  m._compile(source.replace(original, patched), entry);
  lib = m.exports;
} else {
  console.error(`local-aws-sqs: unknown receive semantics "${semantics}" (aws or package)`);
  process.exit(2);
}
lib
  .createSqsServer({ port: 0, hostname: "127.0.0.1", emulateQueueCreationLifecycle: false })
  .then((server) => console.log(`listening on http://127.0.0.1:${server.address().port} (receive semantics: ${semantics})`));
