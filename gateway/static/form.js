// A call's form, made from a function's manifest: one field per parameter, one file picker per input
// file group; values checked in place; problems (the browser's or the gateway's 422) shown at their field.

let uid = 0;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name === "className") node.className = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function typeLabel(spec) {
  if (spec.type === "array" && spec.items && spec.items.type) return `array of ${spec.items.type}`;
  return spec.type || "any";
}

function jsonText(value) {
  return value === undefined || value === null ? "" : JSON.stringify(value, null, 2);
}

class Field {
  constructor(param) {
    this.param = param;
    this.name = param.name;
    this.id = `f${++uid}-${param.name.replace(/[^A-Za-z0-9_-]/g, "_")}`;
    this.where = `inputs.${param.name}`;
    this.box = el("div", { className: "field" });
    this.problem = el("div", { className: "problem", id: `${this.id}-problem`, role: "status" });
    this.problem.hidden = true;
    this.control = this.makeControl();
    const label = el("label", { for: this.id, text: param.name });
    if (param.required) label.append(el("span", { className: "req", text: "*", "aria-hidden": "true" }));
    label.append(el("span", { className: "type", text: typeLabel(param) }));
    const help = param.description ? el("div", { className: "help", id: `${this.id}-help`, text: param.description }) : null;
    this.control.setAttribute("aria-describedby", [help ? help.id : "", this.problem.id].join(" ").trim());
    if (param.required) this.control.setAttribute("aria-required", "true");
    this.control.name = param.name;
    this.box.append(label, help || "", this.control, this.problem);
    this.control.addEventListener("input", () => this.checkInPlace());
    this.control.addEventListener("change", () => this.checkInPlace());
  }

  makeControl() {
    const p = this.param;
    const dflt = p.default;
    if (Array.isArray(p.enum)) {
      const select = el("select", { id: this.id });
      if (!p.required || dflt === undefined || dflt === null) select.append(el("option", { value: "", text: "—" }));
      for (const [index, option] of p.enum.entries()) {
        select.append(el("option", { value: String(index), text: String(option), selected: option === dflt }));
      }
      return select;
    }
    if (p.type === "boolean") {
      const select = el("select", { id: this.id });
      select.append(el("option", { value: "", text: "—" }));
      select.append(el("option", { value: "true", text: "true", selected: dflt === true }));
      select.append(el("option", { value: "false", text: "false", selected: dflt === false }));
      return select;
    }
    if (p.type === "number" || p.type === "integer") {
      return el("input", {
        id: this.id, type: "number", step: p.type === "integer" ? "1" : "any", inputmode: "decimal",
        min: p.minimum, max: p.maximum, value: dflt ?? undefined,
      });
    }
    if (p.type === "array" || p.type === "object") {
      const area = el("textarea", { id: this.id, spellcheck: "false", placeholder: p.type === "array" ? "[ … ]" : "{ … }" });
      area.value = jsonText(dflt);
      return area;
    }
    const long = /text|prompt|content|message|body/i.test(p.name);
    const input = long ? el("textarea", { id: this.id }) : el("input", { id: this.id, type: "text" });
    if (dflt !== undefined && dflt !== null) input.value = String(dflt);
    return input;
  }

  // The value to send, undefined when the field is left empty; throws a message when it cannot be one.
  read() {
    const p = this.param;
    const raw = this.control.value;
    if (raw === "") return undefined;
    if (Array.isArray(p.enum)) return p.enum[Number(raw)];
    if (p.type === "boolean") return raw === "true";
    if (p.type === "number" || p.type === "integer") {
      const number = Number(raw);
      if (!Number.isFinite(number)) throw new Error("must be a number");
      if (p.type === "integer" && !Number.isInteger(number)) throw new Error("must be a whole number");
      if (p.minimum !== undefined && number < p.minimum) throw new Error(`must be at least ${p.minimum}`);
      if (p.maximum !== undefined && number > p.maximum) throw new Error(`must be at most ${p.maximum}`);
      return number;
    }
    if (p.type === "array" || p.type === "object") {
      let value;
      try {
        value = JSON.parse(raw);
      } catch (error) {
        throw new Error(`not valid JSON: ${error.message}`);
      }
      if (p.type === "array" && !Array.isArray(value)) throw new Error("must be a JSON array, like [1, 2]");
      if (p.type === "object" && (typeof value !== "object" || value === null || Array.isArray(value))) {
        throw new Error('must be a JSON object, like {"a": 1}');
      }
      return value;
    }
    return raw;
  }

  checkInPlace() {
    try {
      this.read();
      this.show(null);
    } catch (error) {
      this.show(error.message);
    }
  }

  show(message) {
    this.problem.hidden = !message;
    this.problem.textContent = message || "";
    if (message) this.control.setAttribute("aria-invalid", "true");
    else this.control.removeAttribute("aria-invalid");
  }
}

class FileField extends Field {
  constructor(group, spec) {
    super({ name: group, type: "files", description: spec.description, required: (spec.minItems || 0) > 0 });
    this.where = `files.${group}`;
    this.spec = spec;
    this.control.multiple = spec.maxItems !== 1;
    this.box.querySelector(".type").textContent =
      spec.maxItems === 1 ? "file" : `files${spec.maxItems ? ` (up to ${spec.maxItems})` : ""}`;
  }

  makeControl() {
    return el("input", { id: this.id, type: "file" });
  }

  read() {
    const chosen = Array.from(this.control.files || []);
    const { minItems, maxItems } = this.spec;
    if (minItems && chosen.length < minItems) throw new Error(`choose at least ${minItems} file(s)`);
    if (maxItems !== undefined && chosen.length > maxItems) throw new Error(`choose at most ${maxItems} file(s)`);
    return chosen;
  }
}

export class CallForm {
  constructor(container, fn) {
    this.fields = fn.parameters.map((param) => new Field(param));
    const groups = Object.entries(fn.files || {}).filter(([, g]) => g.items && g.items.type === "InputFile");
    this.fileFields = groups.map(([name, spec]) => new FileField(name, spec));
    container.replaceChildren(...this.fields.map((f) => f.box), ...this.fileFields.map((f) => f.box));
  }

  all() {
    return [...this.fields, ...this.fileFields];
  }

  clear() {
    for (const field of this.all()) field.show(null);
  }

  // {inputs, files: {group: [File]}}; null when a field is wrong (each problem shown, the first focused).
  collect() {
    this.clear();
    const inputs = {};
    const files = {};
    const wrong = [];
    for (const field of this.fields) {
      try {
        const value = field.read();
        if (value === undefined) {
          if (field.param.required) throw new Error("required");
        } else inputs[field.name] = value;
      } catch (error) {
        field.show(error.message);
        wrong.push(field);
      }
    }
    for (const field of this.fileFields) {
      try {
        const chosen = field.read();
        if (chosen.length) files[field.name] = chosen;
      } catch (error) {
        field.show(error.message);
        wrong.push(field);
      }
    }
    if (wrong.length) {
      wrong[0].control.focus();
      return null;
    }
    return { inputs, files };
  }

  // The gateway's 422 details ([{field: "inputs.x" | "files.g[0]", message}]): each at its field; the rest returned.
  showProblems(details) {
    const unplaced = [];
    let first = null;
    for (const problem of details || []) {
      const where = String(problem.field || "");
      const field = this.all().find((f) => where === f.where || where.startsWith(`${f.where}.`)
                                        || where.startsWith(`${f.where}[`));
      if (!field) {
        unplaced.push(`${where}: ${problem.message}`);
        continue;
      }
      const detail = where === field.where ? problem.message : `${where.slice(field.where.length)}: ${problem.message}`;
      field.show(field.problem.hidden ? detail : `${field.problem.textContent}; ${detail}`);
      first = first || field;
    }
    if (first) first.control.focus();
    return unplaced;
  }
}
