// The live event stream: one "task" event per changed task, "reset" when we fell behind.

import { url } from "./api.js";

export function connectLive({ onTask, onReset, onState }) {
  let opened = false;
  let source = null;

  function start() {
    source = new EventSource(url("/events"));
    source.addEventListener("hello", () => {
      onState("live");
      // A reconnect may have missed changes: catch up once.
      if (opened) onReset();
      opened = true;
    });
    source.addEventListener("task", (event) => {
      let row;
      try {
        row = JSON.parse(event.data);
      } catch (e) {
        return;
      }
      onTask(row);
    });
    source.addEventListener("reset", () => onReset());
    source.addEventListener("error", () => {
      onState(source.readyState === EventSource.CLOSED ? "offline" : "connecting");
      if (source.readyState === EventSource.CLOSED) setTimeout(start, 5000);
    });
  }

  start();
  return () => source && source.close();
}
