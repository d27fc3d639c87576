//! A child's environment, built from its spec and the agent's own, and the
//! cache that lets a fan-out of one spec build it once.

use crate::spec;
use crate::sys::spawn::CStringArray;
use rustix::io::Errno;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A child environment built from an [`spec::EnvSpec`] and the agent's own: the
/// array the child execs with, and the map its result reports.
#[derive(Clone)]
pub(crate) struct BuiltEnv {
    pub envp: Arc<CStringArray>,
    pub map: Arc<BTreeMap<String, String>>,
}

/// The environment last built, for the next process whose spec asks for the
/// same one: a fan-out of one spec builds (and holds) its environment once.
#[derive(Default)]
pub(crate) struct EnvCache {
    last: Option<(spec::EnvSpec, BuiltEnv)>,
}

impl EnvCache {
    /// The environment `spec` gives a child of an agent whose own is `agent`;
    /// `Err` if a name or value holds a NUL byte.
    pub(super) fn get(
        &mut self,
        spec: &spec::EnvSpec,
        agent: &[(std::ffi::OsString, std::ffi::OsString)],
    ) -> Result<BuiltEnv, Errno> {
        if let Some((s, built)) = &self.last {
            if s == spec {
                return Ok(built.clone());
            }
        }
        let vars = spec.build(agent.iter().cloned());
        let map = vars
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.to_string_lossy().into_owned(),
                )
            })
            .collect();
        let envp = CStringArray::new(vars.into_iter().map(|(k, v)| {
            use std::os::unix::ffi::OsStrExt;
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            kv
        }))?;
        let built = BuiltEnv {
            envp: Arc::new(envp),
            map: Arc::new(map),
        };
        self.last = Some((spec.clone(), built.clone()));
        Ok(built)
    }
}
