// The seed guide's JavaScript client, verbatim but for where the URL comes from.
// It splits each network chunk on newlines without keeping a partial line between reads,
// so it only works if every SSE event reaches it whole.
const url = process.argv[2];

const response = await fetch(url, {
  method: 'POST',
  headers: {'Content-Type': 'application/json'},
  body: JSON.stringify({inputs: {param: 'test'}})
});
const reader = response.body.getReader();
const decoder = new TextDecoder();
while (true) {
  const {done, value} = await reader.read();
  if (done) break;
  const chunk = decoder.decode(value);
  const lines = chunk.split('\n');
  for (const line of lines) {
    if (line.startsWith('data: ')) {
      const event = JSON.parse(line.slice(6));
      switch (event.type) {
        case 'progress': console.log(`progress: ${event.data.percentage}%`); break;
        case 'content':  process.stdout.write(event.data); break;
        case 'done':     console.log('\ndone!'); break;
      }
    }
  }
}
