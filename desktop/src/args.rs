//! A small `--flag value` parser: the contract's commands need nothing more.

use std::collections::HashMap;

pub struct Args {
    pub command: String,
    values: HashMap<String, String>,
    flags: Vec<String>,
}

/// Flags that take no value.
const SWITCHES: &[&str] = &["json", "help", "attention", "kernels"];

impl Args {
    pub fn parse(argv: &[String]) -> Result<Args, String> {
        let mut it = argv.iter();
        let command = it.next().cloned().unwrap_or_else(|| "help".into());
        let mut values = HashMap::new();
        let mut flags = Vec::new();
        while let Some(a) = it.next() {
            let name = a
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument '{a}' (options are --name value)"))?;
            if let Some((k, v)) = name.split_once('=') {
                values.insert(k.to_string(), v.to_string());
            } else if SWITCHES.contains(&name) {
                flags.push(name.to_string());
            } else {
                let v = it
                    .next()
                    .ok_or_else(|| format!("option --{name} needs a value"))?;
                values.insert(name.to_string(), v.clone());
            }
        }
        Ok(Args {
            command,
            values,
            flags,
        })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn required(&self, name: &str) -> Result<&str, String> {
        self.get(name)
            .ok_or_else(|| format!("{} needs --{name}", self.command))
    }

    pub fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    pub fn parsed<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{name}: cannot parse '{v}'")),
        }
    }

    /// Reject options the command does not know, so a typo is not silently ignored.
    pub fn only(&self, known: &[&str]) -> Result<(), String> {
        for k in self.values.keys().chain(self.flags.iter()) {
            if !known.contains(&k.as_str()) {
                return Err(format!("{}: unknown option --{k}", self.command));
            }
        }
        Ok(())
    }
}
