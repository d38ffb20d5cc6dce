;;; build-fixed.scm -- fixed-output derivations: flat and recursive, a
;;; builder whose output has the wrong hash, a flat output that is a
;;; directory, and the `builtin:download' builder fetching from the HTTP
;;; server on the loopback (a file that is there, and one that is not).
;;;
;;; Usage: guix repl -- build-fixed.scm TRANSCRIPT.json BASE-URL
;;; where BASE-URL (`http://127.0.0.1:PORT') serves `/hello' with the text
;;; "hello over http\n" and nothing at `/missing'.

(load (string-append (dirname (current-filename)) "/build-common.scm"))

(define base-url
  (match (script-arguments)
    ((url . _) url)
    (_ (error "usage: build-fixed.scm TRANSCRIPT.json BASE-URL"))))

(define s (connect))
(set-build-options s #:use-substitutes? #f #:verbosity 1)
(define bb (add-busybox! s))

;;; Flat.

(define flat-text "fixed flat contents\n")
(define flat
  (sh-derivation s bb "fixed-flat"
                 (string-append "printf 'fixed flat contents\\n' > $out")
                 #:hash (sha256 (string->utf8 flat-text)) #:hash-algo 'sha256))
(expect-built! "flat" s (list flat))
(record-outputs! "flat" s flat)
(check! "flat: contents"
        (equal? (file-text (derivation->output-path flat)) flat-text))

;; Another derivation with the same output: its path is the same, so there
;; is nothing to build.
(define flat-again
  (sh-derivation s bb "fixed-flat"
                 "printf 'fixed flat contents\\n' > $out; echo another builder"
                 #:hash (sha256 (string->utf8 flat-text)) #:hash-algo 'sha256))
(check! "flat: same output path for another builder"
        (equal? (derivation->output-path flat-again)
                (derivation->output-path flat)))
(expect-built! "flat, other derivation, same output" s (list flat-again))

;;; Recursive.

(define tree
  `(directory ("a" (regular ,(string->utf8 "a\n")))
              ("link" (symlink "a"))
              ("run" (executable ,(string->utf8 "#!/bin/sh\n")))
              ("sub" (directory ("b" (regular ,(string->utf8 "b\n")))))))
(define tree-hash (sha256 (nar-bytes (make-tree "tree" tree))))
(define recursive
  (sh-derivation s bb "fixed-recursive"
                 (string-append
                  "mkdir $out $out/sub; echo a > $out/a; ln -s a $out/link;"
                  "printf '#!/bin/sh\\n' > $out/run; chmod +x $out/run;"
                  "echo b > $out/sub/b")
                 #:hash tree-hash #:hash-algo 'sha256 #:recursive? #t))
(expect-built! "recursive" s (list recursive))
(record-outputs! "recursive" s recursive)
(record-files! "recursive: files" (derivation->output-path recursive))

;;; Wrong contents.

(define mismatch
  (sh-derivation s bb "fixed-mismatch" "echo not what was promised > $out"
                 #:hash (sha256 (string->utf8 "what was promised\n"))
                 #:hash-algo 'sha256))
(expect-build-error! "hash mismatch" s (list mismatch) "failed" 1)
(check-log! "hash mismatch: message"
            (string-append "hash mismatch for store item '"
                           (derivation->output-path mismatch) "'"))
(check-log! "hash mismatch: trace"
            (string-append "@ hash-mismatch "
                           (derivation->output-path mismatch) " sha256 "))
(record-outputs! "hash mismatch" s mismatch)

;; The expected content is nowhere in the store (guixd would otherwise
;; copy it in instead of running the builder).
(define promised-tree
  (sha256 (nar-bytes (make-tree "promised"
                                `(directory ("a" (regular ,(string->utf8 "promised\n"))))))))
(define recursive-mismatch
  (sh-derivation s bb "fixed-recursive-mismatch"
                 "mkdir $out; echo other > $out/a"
                 #:hash promised-tree #:hash-algo 'sha256 #:recursive? #t))
(expect-build-error! "recursive hash mismatch" s (list recursive-mismatch)
                     "failed" 1)
(check-log! "recursive hash mismatch: message" "hash mismatch for store item")
(record-outputs! "recursive hash mismatch" s recursive-mismatch)

(define flat-dir
  (sh-derivation s bb "fixed-flat-dir" "mkdir $out"
                 #:hash (sha256 (string->utf8 "x")) #:hash-algo 'sha256))
(expect-build-error! "flat output that is a directory" s (list flat-dir)
                     "failed" 1)
(check-log! "flat output that is a directory: message"
            "should be a non-executable regular file")

;; A fixed-output builder that fails: a transient failure (status 1, not
;; 100), since downloads may work another time.
(define fixed-fails
  (sh-derivation s bb "fixed-fails" "echo cannot fetch; exit 2"
                 #:hash (sha256 (string->utf8 "never made\n"))
                 #:hash-algo 'sha256))
(expect-build-error! "fixed-output builder fails" s (list fixed-fails)
                     "failed" 1)
(check-log! "fixed-output builder fails: message"
            (string-append "builder for `" (drv-file fixed-fails)
                           "' failed with exit code 2"))

;;; builtin:download.

(define hello-text "hello over http\n")

(define (download name path text)
  (derivation s name "builtin:download" '()
              #:system %system
              #:env-vars
              `(("url" . ,(object->string (string-append base-url path)))
                ;; Only the URL itself: no mirror may be tried.
                ("download-methods" . "(upstream)"))
              #:hash (sha256 (string->utf8 text)) #:hash-algo 'sha256))

(define hello (download "hello" "/hello" hello-text))
;; The progress report of the download depends on timing; only the
;; outcome is compared.
(let ((o (build! "download" s (list hello) #:record-log? #f)))
  (check! "download: built" (ok? o) o %last-log))
(record-outputs! "download" s hello)
(check! "download: contents"
        (equal? (file-text (derivation->output-path hello)) hello-text))

(define missing (download "missing" "/missing" "whatever\n"))
(let ((o (build! "download, not found" s (list missing) #:record-log? #f)))
  (check! "download, not found: fails"
          (and (error? o) (error-contains? o "failed")) o %last-log))
(record-outputs! "download, not found" s missing)

(step-alive! "alive at the end" s #t)
(finish!)
