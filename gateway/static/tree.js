// The result of a job as a collapsible JSON tree: objects and arrays as <details>, leaves coloured by type.

export function tree(value, key) {
  const label = (node) => {
    if (key !== undefined) node.append(Object.assign(document.createElement("span"), { className: "k", textContent: `${key}: ` }));
    return node;
  };
  if (value !== null && typeof value === "object") {
    const entries = Array.isArray(value) ? value.map((v, i) => [i, v]) : Object.entries(value);
    const details = document.createElement("details");
    details.open = entries.length <= 20;
    const summary = label(document.createElement("summary"));
    summary.append(Array.isArray(value) ? `[${entries.length}]` : `{${entries.length}}`);
    details.append(summary, ...entries.map(([k, v]) => tree(v, k)));
    return details;
  }
  const leaf = label(Object.assign(document.createElement("div"), { className: "leaf" }));
  const kind = { string: "s", number: "n", boolean: "b" }[typeof value] || "z";
  leaf.append(Object.assign(document.createElement("span"), { className: kind, textContent: JSON.stringify(value) }));
  return leaf;
}
