// Package treecheck holds tests that enforce rules of the whole source
// tree (every module in it), which no one package's tests see.
package treecheck

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// root is the repository, two levels up from this package.
const root = "../.."

// sources parses every non-test Go file of the tree, outside testdata and
// hidden directories, and calls f with each.
func sources(t *testing.T, f func(path string, fset *token.FileSet, file *ast.File)) {
	t.Helper()
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			return nil
		}
		file, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		f(filepath.ToSlash(rel), fset, file)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// maxFuncLines is the longest a non-test function may be, from its func
// keyword to its closing brace: past that, split it by what it does.
const maxFuncLines = 80

func TestNoLongFunctions(t *testing.T) {
	n := 0
	sources(t, func(path string, fset *token.FileSet, file *ast.File) {
		for _, d := range file.Decls {
			fn, ok := d.(*ast.FuncDecl)
			if !ok || fn.Body == nil {
				continue
			}
			n++
			start, end := fset.Position(fn.Pos()), fset.Position(fn.End())
			if lines := end.Line - start.Line + 1; lines > maxFuncLines {
				t.Errorf("%s:%d: %s is %d lines; split it (at most %d)", path, start.Line, fn.Name.Name, lines, maxFuncLines)
			}
		}
	})
	if n < 100 {
		t.Fatalf("only %d functions found under %s: the walk is broken", n, root)
	}
}

// flagName is a command-line flag in a string: --name.
var flagName = regexp.MustCompile(`(^|[\s"'(=\[])--[a-z][a-z0-9-]+`)

// Library packages say what happened; the commands, which own the flags,
// name them when they wrap a library's error (see cluster.ErrUnreachable
// and auth.NotCreatedError).
func TestLibrariesNameNoFlags(t *testing.T) {
	libraries := []string{"auth/", "broker/", "client/", "cluster/", "metrics/", "retain/", "status/", "wire/", "internal/"}
	testSupport := []string{"auth/storetest/", "broker/brokertest/"} // how to start a service, for people
	sources(t, func(path string, _ *token.FileSet, file *ast.File) {
		if !hasPrefix(path, libraries) || hasPrefix(path, testSupport) {
			return
		}
		ast.Inspect(file, func(n ast.Node) bool {
			lit, ok := n.(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				return true
			}
			if s, err := strconv.Unquote(lit.Value); err == nil && flagName.MatchString(s) {
				t.Errorf("%s: %q names a command-line flag; let the command add it", path, s)
			}
			return true
		})
	})
}

func hasPrefix(path string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(path, p) {
			return true
		}
	}
	return false
}
