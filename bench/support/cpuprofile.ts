import { readFileSync } from "node:fs";

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: Node[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

export interface SelfTime {
  name: string;
  where: string;
  group: string;
  ms: number;
  share: number;
}

/** Who a function belongs to: a package, connect-drizzle's src, node's internals, or V8. */
function groupOf(url: string, name: string): string {
  if (!url) return name.startsWith("(") ? name : "(V8 builtins)";
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(url)?.[1];
  if (pkg) return pkg;
  if (url.includes("/src/")) return "connect-drizzle src/";
  if (url.includes("/bench/")) return "bench harness";
  if (url.startsWith("node:")) return "node internals";
  return url;
}

/** Self time by function and by group, from a .cpuprofile file; idle time left out of the shares. */
export function summarize(file: string, top = 15): { functions: SelfTime[]; groups: SelfTime[]; busyMs: number } {
  const profile = JSON.parse(readFileSync(file, "utf8")) as Profile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  for (const [i, id] of profile.samples.entries()) self.set(id, (self.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0));
  const fns = new Map<string, SelfTime>();
  const groups = new Map<string, SelfTime>();
  let busy = 0;
  for (const [id, us] of self) {
    const { functionName, url, lineNumber } = byId.get(id)!.callFrame;
    if (functionName === "(idle)") continue;
    busy += us;
    const name = functionName || "(anonymous)";
    const short = url.replace(/^.*node_modules\//, "").replace(/^file:\/\/.*?\/(src|bench)\//, "$1/");
    const where = url ? `${short}:${lineNumber + 1}` : "";
    const group = groupOf(url, name);
    const key = `${name} ${where}`;
    const f = fns.get(key) ?? { name, where, group, ms: 0, share: 0 };
    f.ms += us / 1000;
    fns.set(key, f);
    const g = groups.get(group) ?? { name: group, where: "", group, ms: 0, share: 0 };
    g.ms += us / 1000;
    groups.set(group, g);
  }
  const finish = (m: Map<string, SelfTime>) => [...m.values()].map((x) => ({ ...x, share: x.ms / (busy / 1000) })).sort((a, b) => b.ms - a.ms);
  return { functions: finish(fns).slice(0, top), groups: finish(groups), busyMs: busy / 1000 };
}
