/**
 * Environment expansion with the exact rules of Go's os.ExpandEnv, which the Go tool applies
 * to the -config path: `$NAME` and `${NAME}` are replaced (unset names by ''), `$` followed by
 * anything that cannot start a name stays as it is, and `${}` / an unclosed `${` is eaten.
 */

/** Go's isShellSpecialVar: one-character names such as $1, $*, $#. */
const isShellSpecial = (c: string): boolean => '*#$@!?-0123456789'.includes(c);
const isNameChar = (c: string): boolean => /^[A-Za-z0-9_]$/.test(c);

/** Reads the name after a `$`: the name and how many characters it took. */
function shellName(s: string): { name: string; width: number } {
  if (s[0] === '{') {
    if (s.length > 2 && isShellSpecial(s[1]!) && s[2] === '}') return { name: s[1]!, width: 3 };
    for (let i = 1; i < s.length; i++) {
      if (s[i] === '}') {
        if (i === 1) return { name: '', width: 2 }; // "${}": bad syntax, eaten
        return { name: s.slice(1, i), width: i + 1 };
      }
    }
    return { name: '', width: 1 }; // unclosed "${": bad syntax, eats the "{"
  }
  if (s.length > 0 && isShellSpecial(s[0]!)) return { name: s[0]!, width: 1 };
  let i = 0;
  while (i < s.length && isNameChar(s[i]!)) i++;
  return { name: s.slice(0, i), width: i };
}

export function expandEnv(text: string, env: Record<string, string | undefined> = process.env): string {
  let out = '';
  let i = 0;
  for (let j = 0; j < text.length; j++) {
    if (text[j] === '$' && j + 1 < text.length) {
      out += text.slice(i, j);
      const { name, width } = shellName(text.slice(j + 1));
      if (name === '' && width > 0) {
        // invalid syntax: the characters are dropped
      } else if (name === '') {
        out += '$';
      } else {
        out += env[name] ?? '';
      }
      j += width;
      i = j + 1;
    }
  }
  return out + text.slice(i);
}
