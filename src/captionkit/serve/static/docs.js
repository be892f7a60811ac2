// Renders /openapi.json as plain HTML: the API docs work offline, with nothing fetched from a CDN.
"use strict";

// Where this server is (with the path a reverse proxy serves it under): the API's paths are relative to it.
const BASE = new URL(".", document.baseURI);

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  for (const child of children) node.append(child);
  return node;
}

function schemaText(schema = {}) {
  const bounds = [];
  if (schema.minimum !== undefined) bounds.push(`≥ ${schema.minimum}`);
  if (schema.exclusiveMinimum !== undefined) bounds.push(`> ${schema.exclusiveMinimum}`);
  if (schema.maximum !== undefined) bounds.push(`≤ ${schema.maximum}`);
  return [schema.type || "", bounds.join(", ")].filter(Boolean).join(" ");
}

function parameterTable(parameters) {
  const table = element("table", {}, element("tr", {}, element("th", {}, "name"), element("th", {}, "type"), element("th", {}, "meaning")));
  for (const p of parameters) {
    table.append(element("tr", {}, element("td", {}, element("code", {}, p.name)), element("td", {}, schemaText(p.schema)), element("td", {}, p.description || "")));
  }
  return table;
}

function route(path, method, operation) {
  const where = BASE.pathname + path.replace(/^\//, "");
  const box = element("div", { class: "route" }, element("h2", {}, element("span", { class: "method" }, method.toUpperCase()), where));
  if (operation.summary) box.append(element("p", {}, operation.summary));
  if (operation.parameters && operation.parameters.length) box.append(parameterTable(operation.parameters));
  if (operation.requestBody) {
    box.append(element("p", {}, "Body: ", Object.keys(operation.requestBody.content).map((t) => t).join(" or ")));
  }
  const answer = (((operation.responses || {})["200"] || {}).content || {})["application/json"];
  const fields = Object.keys((answer && answer.schema.properties) || {});
  if (fields.length) box.append(element("p", {}, "Answer: ", element("code", {}, `{${fields.join(", ")}}`), " (schema in /openapi.json)"));
  const statuses = Object.entries(operation.responses || {}).map(([code, r]) => `${code} ${r.description}`);
  if (statuses.length) box.append(element("p", {}, "Responses: " + statuses.join("; ")));
  return box;
}

document.getElementById("example-url").textContent = new URL("v1/captions", BASE).href;
fetch("openapi.json")
  .then((response) => response.json())
  .then((spec) => {
    const routes = document.getElementById("routes");
    routes.replaceChildren(element("p", {}, `${spec.info.title} ${spec.info.version}: ${spec.info.description || ""}`));
    for (const [path, methods] of Object.entries(spec.paths)) {
      for (const [method, operation] of Object.entries(methods)) routes.append(route(path, method, operation));
    }
  })
  .catch((error) => { document.getElementById("routes").textContent = `cannot load /openapi.json: ${error}`; });
