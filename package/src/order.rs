//! Who runs before whom in a package, in time linear in its tasks and
//! constraints: the task order ([`Package::task_order`]) and the question
//! "is T decided before U starts?" that the checks of `${tasks.T…}`
//! references ask.
//!
//! A task after a group runs after every member of it, through nested groups.
//! Listing those members as the task's predecessors costs tasks × members
//! (10,000 tasks after a group of 10,000 is 10^8 edges); instead each group
//! has a virtual *end* node that depends on its members (and on the ends of
//! groups among them), and a task after the group depends on that node.

use std::collections::{BTreeMap, VecDeque};

use crate::model::{Package, Task, TaskKind};

impl Package {
    /// Tasks in dependency order; ties broken by name. `parse` rejects cycles.
    /// A group comes before its members (they start inside it), and every
    /// member before a task that runs after the group.
    pub fn task_order(&self) -> Vec<&Task> {
        let mut graph = Graph::new(self);
        let order = graph.order();
        let tasks: Vec<&Task> = self.tasks.values().collect();
        order.into_iter().map(|i| tasks[i]).collect()
    }
}

/// The precedence graph of a package: tasks by index in name order, plus
/// one end node per group.
pub(crate) struct Graph<'a> {
    pub(crate) names: Vec<&'a str>,
    pub(crate) index: BTreeMap<&'a str, usize>,
    /// The group each task is a member of.
    pub(crate) group_of: Vec<Option<usize>>,
    /// Node (task, or `names.len() + k` for the end of the k-th group) →
    /// the nodes that depend on it.
    out: Vec<Vec<usize>>,
    /// How many nodes each node depends on.
    indeg: Vec<usize>,
    /// Task index of a group → its end node.
    end_of: BTreeMap<usize, usize>,
    /// Edges looked at so far (a deterministic measure of the work, for tests).
    pub(crate) steps: u64,
}

impl<'a> Graph<'a> {
    pub(crate) fn new(p: &'a Package) -> Graph<'a> {
        let names: Vec<&str> = p.tasks.keys().map(String::as_str).collect();
        let index: BTreeMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let n = names.len();
        let mut group_of = vec![None; n];
        let mut end_of = BTreeMap::new();
        for (i, t) in p.tasks.values().enumerate() {
            if let TaskKind::Group(g) = &t.kind {
                end_of.insert(i, n + end_of.len());
                for m in &g.members {
                    if let Some(&mi) = index.get(m.as_str())
                        && group_of[mi].is_none()
                    {
                        group_of[mi] = Some(i);
                    }
                }
            }
        }
        let nodes = n + end_of.len();
        let mut g = Graph {
            names,
            index,
            group_of,
            out: vec![Vec::new(); nodes],
            indeg: vec![0; nodes],
            end_of,
            steps: 0,
        };
        for (i, t) in p.tasks.values().enumerate() {
            for a in t.after_names() {
                let Some(&ai) = g.index.get(a) else { continue };
                g.edge(ai, i);
                if let Some(&end) = g.end_of.get(&ai) {
                    g.edge(end, i);
                }
            }
            if let Some(gi) = g.group_of[i] {
                g.edge(gi, i);
            }
            if let TaskKind::Group(grp) = &t.kind {
                let end = g.end_of[&i];
                for m in &grp.members {
                    let Some(&mi) = g.index.get(m.as_str()) else {
                        continue;
                    };
                    if g.group_of[mi] != Some(i) {
                        continue; // a second group naming it (reported by the checks)
                    }
                    g.edge(mi, end);
                    if let Some(&mend) = g.end_of.get(&mi) {
                        g.edge(mend, end);
                    }
                }
            }
        }
        g
    }

    fn edge(&mut self, from: usize, to: usize) {
        self.out[from].push(to);
        self.indeg[to] += 1;
    }

    fn is_task(&self, node: usize) -> bool {
        node < self.names.len()
    }

    /// Nodes in an order where each comes after every node it depends on
    /// (Kahn's algorithm); nodes on or behind a cycle are left out.
    fn topological(&mut self) -> Vec<usize> {
        let mut indeg = self.indeg.clone();
        let mut queue: VecDeque<usize> = (0..indeg.len()).filter(|&v| indeg[v] == 0).collect();
        let mut out = Vec::with_capacity(indeg.len());
        while let Some(v) = queue.pop_front() {
            out.push(v);
            for &w in &self.out[v] {
                self.steps += 1;
                indeg[w] -= 1;
                if indeg[w] == 0 {
                    queue.push_back(w);
                }
            }
        }
        out
    }

    /// Task indices in [`Package::task_order`]: the order of repeated passes
    /// over the tasks in name order, each taking every task whose
    /// predecessors are taken (so a task comes in the first pass where its
    /// predecessors came before it). Computed in one topological sweep: a
    /// task's pass is, over its predecessors `d`, the largest of `pass(d)`
    /// when `d`'s name sorts before it and `pass(d) + 1` otherwise; a group's
    /// end node carries the largest (pass, index) of its deep members.
    pub(crate) fn order(&mut self) -> Vec<usize> {
        let topo = self.topological();
        let nodes = self.indeg.len();
        // For a task: its pass; for an end node: the largest (pass, index) of its members.
        let mut pass: Vec<u64> = vec![0; self.names.len()];
        let mut agg: Vec<Option<(u64, usize)>> = vec![None; nodes];
        for &v in &topo {
            for wi in 0..self.out[v].len() {
                let w = self.out[v][wi];
                self.steps += 1;
                // What v contributes to w.
                let from: Option<(u64, usize)> = if self.is_task(v) {
                    Some((pass[v], v))
                } else {
                    agg[v]
                };
                let Some((p, i)) = from else { continue };
                if self.is_task(w) {
                    let need = if i < w { p } else { p + 1 };
                    pass[w] = pass[w].max(need);
                } else {
                    agg[w] = agg[w].max(Some((p, i)));
                }
            }
        }
        let mut tasks: Vec<usize> = topo.into_iter().filter(|&v| self.is_task(v)).collect();
        tasks.sort_by_key(|&t| (pass[t], t));
        tasks
    }

    /// For each `(task, target)` query: whether `target` is decided before
    /// `task` starts (a transitive predecessor, through `after`, groups and
    /// their members). Bit sets over the distinct targets only; a query
    /// about a direct predecessor needs none.
    pub(crate) fn precedes(&mut self, queries: &[(usize, usize)]) -> Vec<bool> {
        let mut answers = vec![false; queries.len()];
        if queries.is_empty() {
            return answers;
        }
        let edges: std::collections::HashSet<(usize, usize)> = (0..self.names.len())
            .flat_map(|v| self.out[v].iter().map(move |&w| (v, w)))
            .collect();
        let mut targets: BTreeMap<usize, usize> = BTreeMap::new();
        for (qi, &(task, target)) in queries.iter().enumerate() {
            self.steps += 1;
            if edges.contains(&(target, task)) {
                answers[qi] = true;
            } else {
                let next = targets.len();
                targets.entry(target).or_insert(next);
            }
        }
        if targets.is_empty() {
            return answers;
        }
        let words = targets.len().div_ceil(64);
        let nodes = self.indeg.len();
        // Ancestors among the targets of every node, `words` u64 each.
        let mut anc = vec![0u64; nodes * words];
        let topo = self.topological();
        for &v in &topo {
            for wi in 0..self.out[v].len() {
                let w = self.out[v][wi];
                self.steps += words as u64;
                for k in 0..words {
                    let bits = anc[v * words + k];
                    anc[w * words + k] |= bits;
                }
                if self.is_task(v)
                    && let Some(&bit) = targets.get(&v)
                {
                    anc[w * words + bit / 64] |= 1 << (bit % 64);
                }
            }
        }
        for (qi, &(task, target)) in queries.iter().enumerate() {
            if !answers[qi]
                && let Some(&bit) = targets.get(&target)
            {
                answers[qi] = anc[task * words + bit / 64] & (1 << (bit % 64)) != 0;
            }
        }
        answers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The order as the definition says: repeated passes in name order.
    fn passes(p: &Package) -> Vec<String> {
        let deps = p.order_deps();
        let mut done: std::collections::BTreeSet<&str> = Default::default();
        let mut order = Vec::new();
        loop {
            let before = order.len();
            for name in p.tasks.keys() {
                if !done.contains(name.as_str())
                    && deps[name.as_str()].iter().all(|d| done.contains(d))
                {
                    done.insert(name);
                    order.push(name.clone());
                }
            }
            if order.len() == before {
                return order;
            }
        }
    }

    fn names(p: &Package) -> Vec<String> {
        p.task_order().iter().map(|t| t.name.clone()).collect()
    }

    #[test]
    fn the_sweep_gives_the_order_of_the_passes() {
        let cases = [
            "name='x'\n[tasks.z]\nnoop=true\n[tasks.m]\nnoop=true\nafter=['x']\n[tasks.x]\nnoop=true\n[tasks.y]\nnoop=true\n",
            "name='x'\n[tasks.a]\nnoop=true\nafter=['g']\n[tasks.g]\ngroup=['c','b']\n[tasks.b]\nnoop=true\n[tasks.c]\nnoop=true\nafter=['b']\n[tasks.d]\nnoop=true\n",
            "name='x'\n[tasks.a]\nnoop=true\nafter=['outer']\n[tasks.outer]\ngroup=['inner','y']\n[tasks.inner]\ngroup=['z']\n[tasks.z]\nnoop=true\n[tasks.y]\nnoop=true\n[tasks.b]\nnoop=true\nafter=['a']\n",
            "name='x'\n[tasks.t3]\nnoop=true\nafter=['t2']\n[tasks.t2]\nnoop=true\nafter=['t10']\n[tasks.t10]\nnoop=true\nafter=['t1']\n[tasks.t1]\nnoop=true\n",
        ];
        for text in cases {
            let p = Package::parse("x.toml", text).unwrap();
            assert_eq!(names(&p), passes(&p), "{text}");
        }
    }

    #[test]
    fn ordering_work_grows_linearly_with_the_tasks() {
        // A chain whose names sort against it (the worst case of the passes),
        // and tasks after a big group (tasks × members edges if expanded).
        let chain = |n: usize| {
            let mut t = String::from("name='x'\n");
            for i in 0..n {
                t.push_str(&format!("[tasks.t{:05}]\nnoop=true\n", n - i));
                if i > 0 {
                    t.push_str(&format!("after=['t{:05}']\n", n - i + 1));
                }
            }
            t
        };
        let group = |n: usize| {
            let mut t = String::from("name='x'\n[tasks.g]\ngroup=[");
            for i in 0..n / 2 {
                t.push_str(&format!("'m{i}',"));
            }
            t.push_str("]\n");
            for i in 0..n / 2 {
                t.push_str(&format!(
                    "[tasks.m{i}]\nnoop=true\n[tasks.a{i}]\nnoop=true\nafter=['g']\n"
                ));
            }
            t
        };
        for make in [chain, group] {
            let steps = |n: usize| {
                let p = Package::parse("x.toml", &make(n)).unwrap();
                let mut g = Graph::new(&p);
                let order = g.order();
                assert_eq!(order.len(), p.tasks.len());
                g.steps
            };
            let (small, big) = (steps(500), steps(4_000));
            assert!(
                big <= small * 8 * 2,
                "8x the tasks cost {big} steps against {small}: not linear"
            );
        }
    }
}
