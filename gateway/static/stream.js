// EventSource's interface over fetch, for a page holding an API key but no job token (a job opened from
// the list): it sends the key as a header, which EventSource cannot, and resumes with Last-Event-ID.
import { apiKey } from "./api.js";

export class KeyedEventSource {
  constructor(url, lastSeq) {
    this.url = url;
    this.lastSeq = lastSeq;
    this.onmessage = null;
    this.onerror = null;
    this.controller = new AbortController();
    this.closed = false;
    this.read();
  }

  close() {
    this.closed = true;
    this.controller.abort();
  }

  async read() {
    while (!this.closed) {
      try {
        const headers = { Authorization: `Bearer ${apiKey()}`, Accept: "text/event-stream" };
        if (this.lastSeq) headers["Last-Event-ID"] = String(this.lastSeq);
        const response = await fetch(this.url, { headers, signal: this.controller.signal });
        if (response.status === 204) return;
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        await this.frames(response.body.pipeThrough(new TextDecoderStream()).getReader());
      } catch (error) {
        if (this.closed) return;
        if (this.onerror) this.onerror(error);
      }
      if (!this.closed) await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }

  async frames(reader) {
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const frame = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let id = "";
        const data = [];
        for (const line of frame.split("\n")) {
          if (line.startsWith("id:")) id = line.slice(3).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (!data.length) continue;
        if (id) this.lastSeq = Number(id);
        if (this.onmessage) this.onmessage({ data: data.join("\n"), lastEventId: id });
        if (this.closed) return;
      }
    }
  }
}
